"""`run_sweep`: validate everything, then run the Optuna study with MLflow tracking.

Everything that can be wrong with the input (config, search space, metric, dataset,
storage) is checked before anything is written, so a sweep that never started leaves the
stores untouched. Then: one MLflow experiment per study, a parent run per study (reopened
when the same study resumes), N worker processes sharing the study storage, a live
progress view, and the sweep-level plots at the end.
"""

from __future__ import annotations

import multiprocessing
import warnings
from dataclasses import dataclass
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.live import Live

from convsweep.lightning_modules.data import ImageData, load_dataset
from convsweep.errors import ConvsweepError
from convsweep.search import tracking
from convsweep.search.config import check_metric, safe_instantiate, to_yaml
from convsweep.search.objective import SweepContext, make_objective
from convsweep.search.progress import Poller, SweepProgress
from convsweep.search.space import SearchSpace, parse_space
from convsweep.search.storage import Locations, StorageError, experiment_id, init_mlflow, open_optuna_storage, resolve_locations

# Errors that end one trial (recorded as FAIL) without stopping the sweep. Anything else is a bug.
TRIAL_ERRORS = (ConvsweepError, RuntimeError, FloatingPointError)


@dataclass
class SweepPlan:
    """A validated sweep, ready to run: nothing has been written yet."""

    cfg: DictConfig
    space: SearchSpace
    data: ImageData
    locations: Locations
    client: Any = None  # MlflowClient, opened (and migrated) last in `prepare_sweep`


@dataclass
class SweepSummary:
    """What a finished sweep reports back."""

    study_name: str
    n_complete: int
    n_pruned: int
    n_failed: int
    best_value: float | None
    best_params: dict[str, Any]
    best_run_id: str | None
    parent_run_id: str
    locations: Locations
    resumed: bool


def space_source(cfg: DictConfig) -> str:
    return f"conf/search_space/{cfg.get('choices', {}).get('search_space', 'default')}.yaml"


def make_sampler(cfg: DictConfig, space: SearchSpace, worker: int = 0) -> optuna.samplers.BaseSampler:
    """The configured sampler; workers get distinct seeds so they do not propose the same points."""
    node = OmegaConf.create(OmegaConf.to_container(cfg.sampler))
    if node.get("seed") is not None:
        node.seed = int(node.seed) + worker
    if node.get("search_space") == "auto":
        node.search_space = space.grid()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return safe_instantiate(node)


def prepare_sweep(cfg: DictConfig) -> SweepPlan:
    """Check config, space, metric, sampler, pruner and dataset; raise ConvsweepError before writing anything."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the live view reports every trial, failures with their reason
    check_metric(cfg)
    space = parse_space(OmegaConf.to_container(cfg.search_space), space_source(cfg))
    make_sampler(cfg, space)
    safe_instantiate(cfg.pruner)
    if int(cfg.search.n_workers) < 1 or int(cfg.search.n_trials) < 1:
        raise ConvsweepError("search.n_trials and search.n_workers must be >= 1")
    if cfg.search.get("max_macs") is not None and float(cfg.search.max_macs) <= 0:
        raise ConvsweepError("search.max_macs must be a positive number of MACs per image, or null for no budget")
    data = load_dataset(cfg.dataset)
    locations = resolve_locations(cfg.tracking)
    if not locations.is_journal:
        open_optuna_storage(locations)  # reach the database now, not after the MLflow run exists
    client = init_mlflow(locations)  # last check, and the SQLite migrations: before the study is created
    return SweepPlan(cfg, space, data, locations, client)


def _open_study(plan: SweepPlan, worker: int = 0) -> optuna.Study:
    cfg = plan.cfg
    storage = open_optuna_storage(plan.locations)
    try:
        return optuna.create_study(study_name=str(cfg.search.study_name), storage=storage, load_if_exists=True,
                                   sampler=make_sampler(cfg, plan.space, worker),
                                   pruner=safe_instantiate(cfg.pruner), direction=str(cfg.search.direction))
    except ValueError as exc:  # e.g. resuming with another direction
        raise ConvsweepError(f"cannot open study '{cfg.search.study_name}': {exc}") from None


def _run_trials(plan: SweepPlan, study: optuna.Study, parent_id: str, exp_id: str, client: Any,
                target_total: int | None, n_trials: int | None) -> None:
    """One worker's loop: run trials until this sweep's quota (or the timeout) is reached."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # again: spawned workers start with Optuna's default
    ctx = SweepContext(plan.cfg, plan.space, plan.data, plan.locations, client, exp_id, parent_id)
    callbacks = [optuna.study.MaxTrialsCallback(target_total, states=None)] if target_total else []
    timeout = plan.cfg.search.timeout
    study.optimize(make_objective(ctx), n_trials=n_trials, timeout=float(timeout) if timeout else None,
                   catch=TRIAL_ERRORS, callbacks=callbacks, gc_after_trial=False)


def _worker_main(cfg_container: dict, parent_id: str, exp_id: str, worker: int, target_total: int) -> None:
    """Entry point of an extra local worker process (spawned: fresh interpreter, own dataset cache)."""
    cfg = OmegaConf.create(cfg_container)
    plan = SweepPlan(cfg, parse_space(cfg_container["search_space"], space_source(cfg)), load_dataset(cfg.dataset),
                     resolve_locations(cfg.tracking))
    client = init_mlflow(plan.locations)
    _run_trials(plan, _open_study(plan, worker), parent_id, exp_id, client, target_total, None)


def run_sweep(plan: SweepPlan, console: Console | None = None) -> SweepSummary:
    """Run a validated sweep; same study name + same storage resumes it.

    Args:
        plan: from `prepare_sweep`.
        console: where the live view goes (a quiet one in tests).
    """
    console = console or Console()
    cfg, loc = plan.cfg, plan.locations
    metric = str(cfg.search.metric)
    study = _open_study(plan)
    client = plan.client
    exp_id = experiment_id(client, str(cfg.tracking.experiment_name), loc)
    first = len(study.trials)
    parent_id, resumed = tracking.start_parent_run(
        client, exp_id, study.study_name,
        params={"study_name": study.study_name, "sampler": cfg.choices.sampler, "pruner": cfg.choices.pruner,
                "search_space": cfg.choices.search_space, "dataset": plan.data.name, "metric": metric,
                "direction": cfg.search.direction, "seed": cfg.search.seed},
        tags={tracking.STUDY: study.study_name, **{f"storage.{k}": v for k, v in loc.describe().items()}})
    study.set_user_attr("mlflow_parent_run_id", parent_id)
    client.log_text(parent_id, OmegaConf.to_yaml(cfg.search_space), "search_space.yaml")
    client.log_text(parent_id, to_yaml(cfg), "sweep_config.yaml")
    n_trials, n_workers = int(cfg.search.n_trials), int(cfg.search.n_workers)
    target = first + n_trials
    if resumed:
        console.print(f"resuming study [bold]{study.study_name}[/] ({first} earlier trials)")
    progress = SweepProgress(study, first, n_trials, metric, console)
    status = "FINISHED"
    try:
        with Live(progress, console=console, refresh_per_second=2, transient=False), Poller(progress):
            procs = _start_workers(cfg, parent_id, exp_id, n_workers - 1, target)
            _run_trials(plan, study, parent_id, exp_id, client, target if n_workers > 1 else None,
                        n_trials if n_workers == 1 else None)
            for proc in procs:
                proc.join()
            if any(p.exitcode for p in procs):
                raise ConvsweepError(f"{sum(bool(p.exitcode) for p in procs)} worker process(es) failed; see the messages above")
        console.print()  # the live view's last line has no newline of its own when stdout is not a terminal
        _log_views(study, client, parent_id, plan, console)
    except KeyboardInterrupt:
        status = "KILLED"
        console.print(f"interrupted: finished trials are kept; run the same command to resume study {study.study_name}")
        raise
    finally:
        client.set_terminated(parent_id, status=status)
    return _summarize(study, first, parent_id, loc, resumed)


def _log_views(study: optuna.Study, client: Any, parent_id: str, plan: SweepPlan, console: Console) -> None:
    """Sweep-end pictures; a storage error here must not turn a finished sweep into a failed command."""
    from convsweep.dashboards.sweep_views import log_sweep_views

    try:
        log_sweep_views(study, client, parent_id, str(plan.cfg.search.metric), plan.data,
                        int(plan.cfg.search.top_k_views), console)
    except Exception as exc:  # the trials are recorded already; the views can be redrawn
        console.print(f"[yellow]warning:[/] sweep views not logged ({type(exc).__name__}: {exc}); "
                      f"retry with: convsweep report --study {study.study_name}")


def _start_workers(cfg: DictConfig, parent_id: str, exp_id: str, n: int, target: int) -> list:
    ctx = multiprocessing.get_context("spawn")
    container = OmegaConf.to_container(cfg, resolve=True)
    procs = [ctx.Process(target=_worker_main, args=(container, parent_id, exp_id, i + 1, target), daemon=False)
             for i in range(n)]
    for proc in procs:
        proc.start()
    return procs


def _summarize(study: optuna.Study, first: int, parent_id: str, loc: Locations, resumed: bool) -> SweepSummary:
    trials = [t for t in study.get_trials(deepcopy=False) if t.number >= first]
    count = lambda s: sum(t.state == s for t in trials)  # noqa: E731
    try:
        best = study.best_trial
        best_value, best_params, best_run = float(best.value), dict(best.params), best.user_attrs.get("mlflow_run_id")
    except ValueError:
        best_value, best_params, best_run = None, {}, None
    TS = optuna.trial.TrialState
    return SweepSummary(study.study_name, count(TS.COMPLETE), count(TS.PRUNED), count(TS.FAIL), best_value,
                        best_params, best_run, parent_id, loc, resumed)


def ensure_study_exists(loc: Locations, study_name: str) -> optuna.Study:
    """Load an existing study for read-only commands (best, report, reproduce)."""
    storage = open_optuna_storage(loc, create=False)
    try:
        return optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise StorageError(f"no study '{study_name}' in {loc.describe()['optuna_storage']}; "
                           f"known studies: {', '.join(names) or 'none'}") from None

