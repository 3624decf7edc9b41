"""`objective(trial)`: sample an architecture, check it, train it, record it.

Data flows one way: trial -> sampled (ArchSpec, OptimSpec) -> shape check -> Lightning fit
(reporting every epoch to the pruner) -> metrics -> MLflow child run.

Every way a trial can end is recorded truthfully: its lease is held from the first line (a
killed worker's trial is found lost), and once its MLflow run exists, any exit that is not a
completion ends the run with the trial's state and the same reason as the trial's `reason`
attr (pruned, failed, or `interrupted` by Ctrl-C or SIGTERM, which MLflow shows as KILLED).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass
from typing import Any, Callable, NoReturn, Sequence

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna_integration import PyTorchLightningPruningCallback

from convsweep.dashboards.leaderboard import MODEL_URI
from convsweep.lightning_modules.arch import ArchSpec, OptimSpec
from convsweep.lightning_modules.latency import inference_latency_ms
from convsweep.lightning_modules.network import ArchitectureError, NetworkPlan, plan_convnet
from convsweep.lightning_modules.runner import DivergedError, EpochHistory, TrainResult, train_model
from convsweep.search import run_records as rr
from convsweep.search.dataset_inputs import data_tags, log_dataset
from convsweep.search.environment import environment_record
from convsweep.search.lease import Lease
from convsweep.search.masking import to_yaml
from convsweep.search.model_logging import log_model
from convsweep.search.model_queue import ModelQueue
from convsweep.search.preflight import Objective, SweepPlan, sweep_objectives
from convsweep.search.interrupts import deferred


def trial_config(cfg: DictConfig, arch: ArchSpec, optim: OptimSpec, seed: int) -> DictConfig:
    """The resolved config of one trial: runnable as-is by `convsweep train --config-file`."""
    out = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    out.arch = arch.to_dict()
    out.optim = asdict(optim)
    out.seed = seed
    return out


def run_params(trial_params: dict[str, Any], arch: ArchSpec, optim: OptimSpec) -> dict[str, Any]:
    """The flat params of a run: the sampler's names plus every fixed value they imply."""
    return {**arch.flat_params(), **optim.flat_params(), **trial_params}


def summary_metrics(history: list[dict[str, float]], metric: str, maximize: bool) -> dict[str, float]:
    """Final metrics of a (possibly pruned) fit: the last epoch's values and the best of `metric`."""
    if not history:
        return {}
    values = [row[metric] for row in history if metric in row and math.isfinite(row[metric])]
    out = {f"final/{k}": v for k, v in history[-1].items() if k != "epoch"}
    if values:
        out[f"{metric}_best"] = max(values) if maximize else min(values)
    out["epochs"] = float(len(history))
    return out


def _beaten(study: optuna.Study, values: Sequence[float], n: int) -> bool:
    """Whether a completed trial is at least as good as `values` in each of the first `n` objectives.

    n=1: the trial does not improve on the best metric; n=all: it does not join the Pareto front.
    """
    signs = [1.0 if d == optuna.study.StudyDirection.MAXIMIZE else -1.0 for d in study.directions[:n]]
    return any(all(s * a >= s * b for s, a, b in zip(signs, t.values, values))
               for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)))


class PruningCallback(PyTorchLightningPruningCallback):
    """optuna-integration's pruning callback, except that it never prunes after the last epoch.

    Pruning then saves no training and throws a finished result away: the median pruner does it
    to every trial below the median at the end, and hyperband's rungs (epochs 2, 4, 10, 28 with
    min_resource 1 and reduction factor 3) fall on the last epoch of 4-, 10- or 28-epoch trials.
    The last epoch is still reported, so the pruner sees the whole curve.
    """

    def __init__(self, trial: optuna.Trial, monitor: str) -> None:
        super().__init__(trial, monitor)
        self.trial = trial

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking or trainer.current_epoch < trainer.max_epochs - 1:
            super().on_validation_end(trainer, pl_module)
            return
        score = trainer.callback_metrics.get(self.monitor)
        if score is not None:
            self.trial.report(float(score), step=trainer.current_epoch)


def record_budgets(trial: optuna.Trial, net_plan: NetworkPlan, search: DictConfig) -> str | None:
    """Record each hard limit (search.max_params, search.max_macs) as an Optuna constraint; say why the net is over.

    The constraint is cost / budget - 1 (> 0: over budget), so samplers that read constraints
    (TPE, NSGA-II, GP) learn where the limit lies from the over-budget trials, which are never trained.
    """
    reasons = []
    for key, cost, text in (("max_params", net_plan.params, f"{net_plan.params:,} params"),
                            ("max_macs", net_plan.macs, f"{net_plan.macs / 1e6:.1f}M MACs per image")):
        budget = search.get(key)
        if budget is None:
            continue
        trial.set_constraint(key, cost / float(budget) - 1.0)
        if cost > float(budget):
            limit = f"{float(budget):,.0f}" if key == "max_params" else f"{float(budget) / 1e6:g}M"
            reasons.append(f"{text} exceeds the budget search.{key}={limit}")
    return "; ".join(reasons) or None


@dataclass(frozen=True)
class TrialSteps:
    """One trial's work in the order it runs: `lease` it, `sample` its architecture, `run` it.

    `study.optimize` runs all three back to back (`make_objective`); the ask-ahead loop
    (search/ask_ahead.py) leases and samples the next trial while the current one runs.
    """

    lease: Callable[[optuna.Trial], Lease]
    sample: Callable[[optuna.Trial], tuple[ArchSpec, OptimSpec]]
    run: Callable[[optuna.Trial, tuple[ArchSpec, OptimSpec]], float | tuple[float, ...]]


def make_objective(sweep: SweepPlan, models: ModelQueue | None = None) -> Callable[[optuna.Trial], float | tuple[float, ...]]:
    """Build `objective(trial) -> float` (or a tuple, one value per `search.objectives`) for `study.optimize`.

    With `models`, trial models are logged in its background thread (the caller drains it); without, in turn.
    """
    steps = make_trial_steps(sweep, models=models)

    def objective(trial: optuna.Trial) -> float | tuple[float, ...]:
        with steps.lease(trial):
            return steps.run(trial, steps.sample(trial))

    return objective


def make_trial_steps(sweep: SweepPlan, ask_ahead: bool = False, models: ModelQueue | None = None) -> TrialSteps:
    """The steps of the sweep's trials.

    Args:
        sweep: the sweep.
        ask_ahead: the trials are asked outside `study.optimize`, whose thread beats for RDB
            storages: the lease's thread then beats on every storage.
        models: logs trial models in the background (search/model_queue.py); None logs them in turn.
    """
    cfg, data, client = sweep.cfg, sweep.data, sweep.client
    metric, maximize = str(cfg.search.metric), cfg.search.direction == "maximize"
    objectives = sweep_objectives(cfg)
    env_tags = {f"env.{k}": v for k, v in environment_record().items()}
    dtags = data_tags(data)
    # the journal file has no heartbeat of its own: the lease's thread beats instead (RDB: Optuna's does)
    beat = float(cfg.search.heartbeat_interval) if sweep.locations.is_journal or ask_ahead else None

    def lease(trial: optuna.Trial) -> Lease:
        return Lease(trial, beat, rdb_heartbeat=ask_ahead and not sweep.locations.is_journal)

    def run(trial: optuna.Trial, sampled: tuple[ArchSpec, OptimSpec]) -> float | tuple[float, ...]:
        arch, optim = sampled
        seed = int(cfg.search.seed) + trial.number
        history = EpochHistory(metric, str(cfg.search.direction))
        run_id = None
        try:
            with deferred():  # an interrupt waits until the run exists and the trial knows it
                run_id = rr.start_child_run(
                    client, sweep.experiment_id, sweep.parent_run_id, f"trial-{trial.number:03d}", "trial",
                    params={**run_params(trial.params, arch, optim), "seed": seed},
                    tags={rr.STUDY: trial.study.study_name, rr.TRIAL: trial.number, **env_tags, **dtags},
                    config_yaml=to_yaml(trial_config(cfg, arch, optim, seed)))
                trial.set_user_attr("mlflow_run_id", run_id)  # its config lives once, as that run's config.yaml
            return fit(trial, run_id, arch, optim, seed, history)
        except BaseException as exc:
            _end_early(client, trial, run_id, exc, summary_metrics(history.epochs, metric, maximize))
            raise

    def fit(trial: optuna.Trial, run_id: str, arch: ArchSpec, optim: OptimSpec, seed: int,
            history: EpochHistory) -> float | tuple[float, ...]:
        """Check, train and record one trial whose run exists; raises TrialPruned or an error to end it early."""
        trial.set_user_attr("filters", [block.filters for block in arch.blocks])  # for the leaderboard
        with deferred():
            log_dataset(client, run_id, data)
        try:
            net_plan = plan_convnet(arch, data.input_shape, data.num_classes)
        except ArchitectureError as exc:
            _reject(trial, str(exc), str(cfg.search.fail_on_collapse))
        over_budget = record_budgets(trial, net_plan, cfg.search)
        if over_budget:
            _reject(trial, over_budget, "pruned")
        cost = {"model/params": float(net_plan.params), "model/macs": float(net_plan.macs), "model/flops": 2.0 * net_plan.macs}
        trial.set_user_attr("params_count", net_plan.params)
        trial.set_user_attr("macs", net_plan.macs)
        rr.log_batch(client, run_id, metrics=cost)
        history.listeners.append(rr.epoch_logger(client, run_id))
        # Optuna cannot prune a multi-objective trial (Trial.report raises): it trains to the end
        callbacks = [PruningCallback(trial, metric)] if len(objectives) == 1 else []
        try:
            result = train_model(data, arch, optim, cfg.trainer, seed=seed, metric=metric,
                                 direction=str(cfg.search.direction), callbacks=callbacks, history=history)
        except DivergedError as exc:  # a NaN loss is a result of these params, like a pruned trial: not an error
            raise optuna.TrialPruned(str(exc)) from None
        return _complete(sweep, trial, run_id, result, objectives, cost, models)

    return TrialSteps(lease, sweep.space.sample, run)


def _end_early(client: Any, trial: optuna.Trial, run_id: str | None, exc: BaseException,
               metrics: dict[str, float]) -> None:
    """Record why a trial ends without a result, as its `reason` attr and its run's `convsweep.reason` tag.

    Pruned: PRUNED (MLflow KILLED). Ctrl-C or SIGTERM: FAIL `interrupted` (MLflow KILLED). Any
    other error: FAIL with the error, passwords masked (MLflow FAILED). Optuna then records the
    state. Without `run_id` the run was never made (or `start_child_run` ended it).
    """
    pruned = isinstance(exc, optuna.TrialPruned)
    reason = str(exc) if pruned else rr.failure_reason(exc)
    # The store may be what failed: the trial still ends with the original error, and a later
    # recovery (`close_orphan_runs`) ends a run left RUNNING here.
    with contextlib.suppress(Exception):
        trial.set_user_attr("reason", reason)
    if run_id is not None:
        with contextlib.suppress(Exception):
            if pruned:
                rr.finish_run(client, run_id, "PRUNED", metrics, {rr.REASON: reason})
            else:
                rr.end_failed(client, run_id, exc, metrics)


def _reject(trial: optuna.Trial, reason: str, mode: str) -> NoReturn:
    """End a trial whose architecture cannot be built (or is over budget): pruned or failed (`mode`)."""
    trial.set_user_attr("invalid_reason", reason)
    if mode == "failed":
        raise ArchitectureError(f"invalid architecture: {reason}")
    raise optuna.TrialPruned(f"invalid architecture: {reason}")


def _complete(sweep: SweepPlan, trial: optuna.Trial, run_id: str, result: TrainResult, objectives: list[Objective],
              cost: dict[str, float], models: ModelQueue | None) -> float | tuple[float, ...]:
    """Record a finished fit; log its model if it is the study's best so far, or joins the Pareto front (or always,
    if asked): in `models`' background thread when given, the run then ending once the model is in. Returns the
    metric, or one value per objective in order."""
    metric, client = str(sweep.cfg.search.metric), sweep.client
    value = float(result.best_value)
    measured = ({"model/latency_ms": inference_latency_ms(result.model, sweep.data.input_shape, result.device)}
                if any(o.name == "model/latency_ms" for o in objectives) else {})
    values = [value] + [{**cost, **measured}[o.name] for o in objectives[1:]]
    metrics = {**summary_metrics(result.history, metric, objectives[0].direction == "maximize"),
               "duration_s": result.duration_s, **measured}
    trial.set_user_attr("device", result.device)
    trial.set_user_attr("duration_s", result.duration_s)
    trial.set_user_attr("cuda_graphs", result.cuda_graphs)
    tags = {"device": result.device, "best_epoch": result.best_epoch,
            "cuda_graphs": result.cuda_graphs}  # and why not, when they were asked for (trainer.cuda_graphs)
    if result.fallback_reason:
        trial.set_user_attr("cuda_graphs_fallback", result.fallback_reason)
        tags["cuda_graphs.fallback_reason"] = result.fallback_reason
    mode = sweep.cfg.search.log_models
    if mode == "all" or (mode == "best" and not _beaten(trial.study, values, len(values))):
        model = result.model.to("cpu")  # here, not in the logging thread, which must not touch CUDA
        if models is not None:
            models.log_and_finish(client, run_id, model, sweep.data.input_shape, metrics, tags)
            return value if len(values) == 1 else tuple(values)
        with deferred():
            tags[MODEL_URI] = log_model(run_id, model, sweep.data.input_shape)
    rr.finish_run(client, run_id, "COMPLETE", metrics, tags)
    return value if len(values) == 1 else tuple(values)
