"""`objective(trial)`: sample an architecture, check it, train it, record it.

Data flows one way: trial -> sampled (ArchSpec, OptimSpec) -> shape check -> Lightning fit
(reporting every epoch to the pruner) -> metrics -> MLflow child run.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna_integration import PyTorchLightningPruningCallback

from convsweep.lightning_modules.arch import ArchSpec, OptimSpec
from convsweep.lightning_modules.data import ImageData
from convsweep.lightning_modules.network import ArchitectureError, plan_convnet
from convsweep.lightning_modules.runner import EpochHistory, TrainResult, train_model
from convsweep.search import tracking
from convsweep.search.config import safe_container, to_yaml
from convsweep.search.environment import environment_record
from convsweep.search.space import SearchSpace
from convsweep.search.storage import Locations, mask_uri


@dataclass
class SweepContext:
    """Everything a worker needs to run trials of one study."""

    cfg: DictConfig
    space: SearchSpace
    data: ImageData
    locations: Locations
    client: Any  # MlflowClient
    experiment_id: str
    parent_run_id: str


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
    values = [row[metric] for row in history if metric in row]
    out = {f"final/{k}": v for k, v in history[-1].items() if k != "epoch"}
    if values:
        out[f"{metric}_best"] = max(values) if maximize else min(values)
    out["epochs"] = float(len(history))
    return out


def _improves(trial: optuna.Trial, value: float) -> bool:
    try:
        best = trial.study.best_value
    except ValueError:  # no completed trial yet
        return True
    return value > best if trial.study.direction == optuna.study.StudyDirection.MAXIMIZE else value < best


def make_objective(ctx: SweepContext):  # noqa: ANN201 - returns the objective callable
    """Build `objective(trial) -> float` for `study.optimize`."""
    cfg, data, client = ctx.cfg, ctx.data, ctx.client
    metric, maximize = str(cfg.search.metric), cfg.search.direction == "maximize"
    env_tags = {f"env.{k}": v for k, v in environment_record().items()}
    data_tags = tracking.data_tags(data)

    def objective(trial: optuna.Trial) -> float:
        arch, optim = ctx.space.sample(trial)
        seed = int(cfg.search.seed) + trial.number
        tcfg = trial_config(cfg, arch, optim, seed)
        trial.set_user_attr("config", safe_container(tcfg))  # `best`/`reproduce` re-point tracking anyway
        run_id = tracking.start_child_run(
            client, ctx.experiment_id, ctx.parent_run_id, f"trial-{trial.number:03d}", "trial",
            params={**run_params(trial.params, arch, optim), "seed": seed},
            tags={tracking.STUDY: trial.study.study_name, tracking.TRIAL: trial.number, **env_tags, **data_tags},
            config_yaml=to_yaml(tcfg))
        trial.set_user_attr("mlflow_run_id", run_id)
        tracking.log_dataset(client, run_id, data)
        try:
            plan = plan_convnet(arch, data.input_shape, data.num_classes)
        except ArchitectureError as exc:
            return _reject(client, trial, run_id, str(exc), str(cfg.search.fail_on_collapse))
        budget = cfg.search.get("max_macs")
        if budget and plan.macs > float(budget):
            return _reject(client, trial, run_id, f"{plan.macs / 1e6:.1f}M MACs per image exceeds the budget "
                           f"search.max_macs={float(budget) / 1e6:g}M", "pruned")
        cost = {"model/params": float(plan.params), "model/macs": float(plan.macs), "model/flops": 2.0 * plan.macs}
        trial.set_user_attr("params_count", plan.params)
        trial.set_user_attr("macs", plan.macs)
        tracking.log_batch(client, run_id, metrics=cost)
        history = EpochHistory(metric, str(cfg.search.direction))
        callbacks = [tracking.MlflowEpochLogger(client, run_id, history), PyTorchLightningPruningCallback(trial, metric)]
        try:
            result = train_model(data, arch, optim, cfg.trainer, seed=seed, metric=metric,
                                 direction=str(cfg.search.direction), callbacks=callbacks, history=history)
        except optuna.TrialPruned as exc:
            tracking.finish_run(client, run_id, "PRUNED", summary_metrics(history.epochs, metric, maximize),
                                {tracking.REASON: str(exc)})
            raise
        except BaseException as exc:
            tracking.finish_run(client, run_id, "FAIL", summary_metrics(history.epochs, metric, maximize),
                                {tracking.REASON: mask_uri(f"{type(exc).__name__}: {exc}")[:1000]})
            raise
        return _complete(ctx, trial, run_id, result, maximize)

    return objective


def _reject(client: Any, trial: optuna.Trial, run_id: str, reason: str, mode: str) -> float:
    """End a trial whose architecture cannot be built (or is over budget): pruned or failed, reason recorded."""
    trial.set_user_attr("invalid_reason", reason)
    state = "FAIL" if mode == "failed" else "PRUNED"
    tracking.finish_run(client, run_id, state, tags={tracking.REASON: f"invalid architecture: {reason}"})
    if state == "FAIL":
        raise ArchitectureError(reason)
    raise optuna.TrialPruned(f"invalid architecture: {reason}")


def _complete(ctx: SweepContext, trial: optuna.Trial, run_id: str, result: TrainResult, maximize: bool) -> float:
    """Record a finished fit; log its model if it is the study's best so far (or always, if asked)."""
    metric, client = str(ctx.cfg.search.metric), ctx.client
    value = float(result.best_value)
    metrics = {**summary_metrics(result.history, metric, maximize), "duration_s": result.duration_s}
    improves = _improves(trial, value)
    mode = ctx.cfg.search.log_models
    if mode == "all" or (mode == "best" and improves):
        trial.set_user_attr("model_uri", tracking.log_model(run_id, result.model, ctx.data.input_shape))
    if improves:
        tracking.log_batch(client, ctx.parent_run_id, metrics={f"best/{metric}": value}, step=trial.number,
                           tags={"best.trial_number": trial.number, "best.run_id": run_id,
                                 f"best.{metric}": value, "best.params": str(trial.params)[:5000]})
    trial.set_user_attr("device", result.device)
    trial.set_user_attr("duration_s", result.duration_s)
    tracking.finish_run(client, run_id, "COMPLETE", metrics, {"device": result.device, "best_epoch": result.best_epoch})
    return value
