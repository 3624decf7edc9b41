"""`prepare_sweep`: check everything that can be wrong with the input before anything is written.

Config, metric, search space, sampler, pruner, dataset and both stores are checked here, so
a sweep that never started leaves the stores untouched. The result is the one object that
carries a planned sweep, `SweepPlan`, through the workers and the objective.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from convsweep.errors import ConvsweepError
from convsweep.lightning_modules.data import ImageData, load_dataset
from convsweep.search.allowlist import safe_instantiate
from convsweep.search.samplers import make_sampler
from convsweep.search.space import SearchSpace, parse_space
from convsweep.search.storage import Locations, init_mlflow, open_optuna_storage, resolve_locations


@dataclass
class SweepPlan:
    """A validated sweep. `experiment_id` and `parent_run_id` are set once its parent run exists."""

    cfg: DictConfig
    space: SearchSpace
    data: ImageData
    locations: Locations
    client: Any = None  # MlflowClient, opened (and migrated) last in `prepare_sweep`
    experiment_id: str | None = None
    parent_run_id: str | None = None


def space_source(cfg: DictConfig) -> str:
    """The YAML file a sweep's space came from, for error messages."""
    return f"conf/search_space/{cfg.get('choices', {}).get('search_space', 'default')}.yaml"


def check_metric(cfg: DictConfig) -> None:
    """One metric name feeds pruning, checkpointing, objective and leaderboard: it must exist."""
    from convsweep.lightning_modules.module import METRICS  # noqa: PLC0415 - keeps torch out of `convsweep config`

    metric, direction = str(cfg.search.metric), str(cfg.search.direction)
    if metric not in METRICS:
        raise ConvsweepError(f"unknown metric '{metric}'; search.metric must be one of: {', '.join(METRICS)}")
    if direction not in ("maximize", "minimize"):
        raise ConvsweepError(f"search.direction must be maximize or minimize (got '{direction}')")
    wanted = "maximize" if metric.endswith("acc") else "minimize"
    if direction != wanted:
        raise ConvsweepError(f"search.direction={direction} does not fit {metric}; use search.direction={wanted}")


def prepare_sweep(cfg: DictConfig) -> SweepPlan:
    """Check config, space, metric, sampler, pruner and dataset; raise ConvsweepError before writing anything."""
    import optuna

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
