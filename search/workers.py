"""Worker processes: each runs `study.optimize` on the shared study until the sweep's quota is reached."""

from __future__ import annotations

import multiprocessing
from typing import Any

import optuna
from omegaconf import OmegaConf

from convsweep.errors import ConvsweepError
from convsweep.lightning_modules.data import load_dataset
from convsweep.search.objective import make_objective
from convsweep.search.preflight import SweepPlan, space_source
from convsweep.search.space import parse_space
from convsweep.search.storage import init_mlflow, resolve_locations
from convsweep.search.studies import open_study

# Errors that end one trial (recorded as FAIL) without stopping the sweep. Anything else is a bug.
TRIAL_ERRORS = (ConvsweepError, RuntimeError, FloatingPointError)


def run_trials(plan: SweepPlan, study: optuna.Study, target_total: int | None, n_trials: int | None) -> None:
    """One worker's loop: run trials until this sweep's quota (or the timeout) is reached."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # again: spawned workers start with Optuna's default
    callbacks = [optuna.study.MaxTrialsCallback(target_total, states=None)] if target_total else []
    timeout = plan.cfg.search.timeout
    study.optimize(make_objective(plan), n_trials=n_trials, timeout=float(timeout) if timeout else None,
                   catch=TRIAL_ERRORS, callbacks=callbacks, gc_after_trial=False)


def _worker_main(cfg_container: dict, parent_id: str, exp_id: str, worker: int, target_total: int) -> None:
    """Entry point of an extra local worker process (spawned: fresh interpreter, own dataset cache)."""
    cfg = OmegaConf.create(cfg_container)
    locations = resolve_locations(cfg.tracking)
    plan = SweepPlan(cfg, parse_space(cfg_container["search_space"], space_source(cfg)), load_dataset(cfg.dataset),
                     locations, init_mlflow(locations), exp_id, parent_id)
    run_trials(plan, open_study(plan, worker), target_total, None)


def start_workers(plan: SweepPlan, n: int, target: int) -> list[Any]:
    """Start `n` extra local worker processes (spawned, so CUDA and threads start clean)."""
    ctx = multiprocessing.get_context("spawn")
    container = OmegaConf.to_container(plan.cfg, resolve=True)
    procs = [ctx.Process(target=_worker_main, args=(container, plan.parent_run_id, plan.experiment_id, i + 1, target),
                         daemon=False) for i in range(n)]
    for proc in procs:
        proc.start()
    return procs
