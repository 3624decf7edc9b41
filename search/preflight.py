"""`prepare_sweep`: check everything that can be wrong with the input before anything is written.

Config, metric, search space, sampler, pruner, dataset and both stores are checked here, so
a sweep that never started leaves the stores untouched. The result is the one object that
carries a planned sweep, `SweepPlan`, through the workers and the objective.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from convsweep.errors import ConvsweepError
from convsweep.lightning_modules.data import ImageData, load_dataset
from convsweep.search.allowlist import safe_instantiate
from convsweep.search.baselines import check_baselines
from convsweep.search.samplers import GP_SAMPLER, GRID_SAMPLER, make_sampler
from convsweep.search.space import SearchSpace, parse_space
from convsweep.search.storage import Locations, init_mlflow, open_optuna_storage, resolve_locations
from convsweep.search.store_prewarm import StorePrewarm


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
    from convsweep.lightning_modules.metrics import METRICS  # noqa: PLC0415

    metric, direction = str(cfg.search.metric), str(cfg.search.direction)
    if metric not in METRICS:
        raise ConvsweepError(f"unknown metric '{metric}'; search.metric must be one of: {', '.join(METRICS)}")
    if direction not in ("maximize", "minimize"):
        raise ConvsweepError(f"search.direction must be maximize or minimize (got '{direction}')")
    wanted = "maximize" if metric.endswith("acc") else "minimize"
    if direction != wanted:
        raise ConvsweepError(f"search.direction={direction} does not fit {metric}; use search.direction={wanted}")


# What a multi-objective sweep may trade its metric against: costs known from the plan before
# training (params, MACs per image) or measured after it (latency of one image), all lower-better.
COST_METRICS = ("model/params", "model/macs", "model/latency_ms")


@dataclass(frozen=True)
class Objective:
    """One value a trial returns to Optuna: a metric name and its direction."""

    name: str  # search.metric or one of COST_METRICS
    direction: str  # maximize | minimize


def sweep_objectives(cfg: DictConfig) -> list[Objective]:
    """The study's objectives in order: `search.objectives`, or `search.metric` alone when that is empty.

    The sweep's metric comes first, so pruning, checkpointing, the leaderboard and the plots all
    read the first value as they do in a single-objective study.
    """
    metric, direction = str(cfg.search.metric), str(cfg.search.direction)
    items = cfg.search.get("objectives") or []  # a list of strings (schema.py)
    example = f"e.g. search.objectives=[{metric}:{direction},model/params:minimize]"
    if not items:
        return [Objective(metric, direction)]
    out: list[Objective] = []
    for item in items:
        name, _, wanted = str(item).partition(":")
        natural = direction if name == metric else "minimize"
        if name != metric and name not in COST_METRICS:
            raise ConvsweepError(f"search.objectives: unknown objective '{name}'; use search.metric ({metric}) "
                                 f"and any of {', '.join(COST_METRICS)}, {example}")
        if wanted not in ("", "maximize", "minimize"):
            raise ConvsweepError(f"search.objectives: '{item}': the direction must be maximize or minimize")
        if wanted and wanted != natural:
            raise ConvsweepError(f"search.objectives: '{item}' has the wrong direction; use {name}:{natural}")
        if name in (o.name for o in out):
            raise ConvsweepError(f"search.objectives: '{name}' appears twice; list each objective once")
        out.append(Objective(name, natural))
    if out[0].name != metric:
        raise ConvsweepError(f"search.objectives must start with the sweep's metric (search.metric={metric}), {example}")
    return out


SPACE_ATTR = "search_space_fingerprint"  # study user attrs: the space a study was created with
SPACE_NAME_ATTR = "search_space_file"


def space_fingerprint(cfg: DictConfig) -> str:
    """A hash of the resolved search space: a study keeps the space it was created with."""
    raw = json.dumps(OmegaConf.to_container(cfg.search_space, resolve=True), sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def check_same_space(loc: Locations, cfg: DictConfig) -> None:
    """Refuse to resume a study with another search space, reading the study only.

    Optuna would fail mid-sweep on a parameter whose kind changed, or silently mix two spaces
    in one study, whose history then explains neither.
    """
    import optuna

    name = str(cfg.search.study_name)
    if loc.is_journal and not Path(loc.optuna_url).exists():
        return
    try:
        study = optuna.load_study(study_name=name, storage=open_optuna_storage(loc, create=False))
    except KeyError:  # a new study
        return
    recorded, current = study.user_attrs.get(SPACE_ATTR), space_fingerprint(cfg)
    if recorded is not None and recorded != current:
        option = cfg.get("choices", {}).get("search_space") or "new"
        raise ConvsweepError(f"study '{name}' was created with another search space ({recorded}, from "
                             f"{study.user_attrs.get(SPACE_NAME_ATTR, '?')}) than this one ({current}, from "
                             f"{space_source(cfg)}); resume it with its own space, or start a new study: "
                             f"search.study_name={name}-{option}")


def resolve_n_workers(cfg: DictConfig) -> int:
    """Replace `search.n_workers: auto` by the count for this device and its cores, in `cfg` itself.

    The workers, the live view and the run's logged config then all hold the number that ran.
    """
    if cfg.search.n_workers == "auto":
        from convsweep.lightning_modules.runner import resolve_device  # noqa: PLC0415 - torch only when a sweep runs
        from convsweep.lightning_modules.worker_budget import auto_workers  # noqa: PLC0415

        cfg.search.n_workers = auto_workers(resolve_device(str(cfg.trainer.accelerator)))
    return int(cfg.search.n_workers)


def resolve_ask_ahead(cfg: DictConfig) -> bool:
    """Replace `search.ask_ahead: auto` by whether the next trial is asked while the current one trains, in `cfg`.

    auto: on for CUDA, where a trial lasts seconds and the sampler's 0.1-0.3 s matters; off on CPU, where
    trials last tens of seconds and the asking thread would take a core from training. Never with
    sampler=grid (Optuna's BruteForceSampler ends the search with `study.stop()`, which only
    `study.optimize` can take) or sampler=gp (Optuna's GPSampler sets torch's thread count and
    environment variables while it samples, which would change them under the training thread).
    """
    target = cfg.sampler.get("_target_")
    unfit = {GRID_SAMPLER: "grid (its search ends with study.stop(), which needs study.optimize)",
             GP_SAMPLER: "gp (it sets torch's thread count while it samples, under the training thread)"}.get(target)
    if cfg.search.ask_ahead is True and unfit:
        raise ConvsweepError(f"search.ask_ahead=true does not work with sampler={unfit}; "
                             "use search.ask_ahead=auto or false")
    if cfg.search.ask_ahead == "auto":
        from convsweep.lightning_modules.runner import resolve_device  # noqa: PLC0415 - torch only when a sweep runs

        cfg.search.ask_ahead = not unfit and resolve_device(str(cfg.trainer.accelerator)) == "cuda"
    return bool(cfg.search.ask_ahead)


def check_search(cfg: DictConfig) -> SearchSpace:
    """The checks that need no dataset, store or Lightning (metric, objectives, space, sampler, pruner): the CLI
    runs them before its heavy imports, so a typo is reported in seconds, not after 10-20 s of imports."""
    check_metric(cfg)
    sweep_objectives(cfg)
    space = parse_space(OmegaConf.to_container(cfg.search_space), space_source(cfg))
    make_sampler(cfg, space)
    safe_instantiate(cfg.pruner)
    return space


def prepare_sweep(cfg: DictConfig, prewarm: StorePrewarm | None = None) -> SweepPlan:
    """Check config, space, metric, sampler, pruner and dataset; raise ConvsweepError before writing anything.

    Args:
        cfg: the composed config.
        prewarm: a new MLflow store being migrated meanwhile (`store_prewarm.start`), put in place
            once every check has passed.
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # the live view reports every trial, failures with their reason
    space = check_search(cfg)
    resolve_n_workers(cfg)
    resolve_ask_ahead(cfg)
    data = load_dataset(cfg.dataset)
    check_baselines(cfg, space, data.input_shape, data.num_classes)
    locations = resolve_locations(cfg.tracking)
    if not locations.is_journal:
        open_optuna_storage(locations)  # reach the database now, not after the MLflow run exists
    check_same_space(locations, cfg)
    if prewarm is not None:
        prewarm.install()
    client = init_mlflow(locations)  # last check, and the SQLite migrations: before the study is created
    return SweepPlan(cfg, space, data, locations, client)
