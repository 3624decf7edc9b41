"""Several worker processes on one study: local journal storage, and PostgreSQL as across machines.

Each trial's lease (search/lease.py) names the process that ran it, so the tests see which worker
ran what.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest
from mlflow.tracking import MlflowClient
from rich.console import Console

from convsweep.search import run_records as tracking
from convsweep.search import workers
from convsweep.search.lease import LEASE
from convsweep.search.storage import resolve_locations
from convsweep.search.preflight import prepare_sweep
from convsweep.search.studies import ensure_study_exists
from convsweep.search.sweep import run_sweep


WORKER_START_TIMEOUT_S = 300  # a spawned worker imports torch, Lightning and MLflow first: 10-40 s here


@pytest.fixture
def every_worker_runs_a_trial(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sweep's main process, a worker too and already warm, holds its first trial until a spawned worker
    has started one (the trial's lease names another pid). Without this it can run the whole budget before
    the spawned worker has imported torch; with it, a spawned worker that runs nothing fails the test."""
    make_objective = workers.make_objective

    def held(plan: Any, *args: Any) -> Callable[[optuna.Trial], Any]:
        objective = make_objective(plan, *args)

        def run(trial: optuna.Trial) -> Any:
            deadline = time.monotonic() + WORKER_START_TIMEOUT_S
            while not any(t.user_attrs.get(LEASE, {}).get("pid") not in (None, os.getpid())
                          for t in trial.study.get_trials(deepcopy=False)):
                assert time.monotonic() < deadline, f"no spawned worker started a trial in {WORKER_START_TIMEOUT_S} s"
                time.sleep(0.2)
            return objective(trial)

        return run

    monkeypatch.setattr(workers, "make_objective", held)  # in this process only: spawned workers import afresh


def check_shared_study(cfg, n_trials: int) -> None:
    """Every trial ran once, under one parent run, with one MLflow child run each; every worker ran some."""
    loc = resolve_locations(cfg.tracking)
    study = ensure_study_exists(loc, str(cfg.search.study_name))
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state.is_finished()]
    assert len(finished) == len(trials)
    assert len(trials) == n_trials  # the workers share one budget: none starts a trial past it
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert len({t.user_attrs["mlflow_run_id"] for t in trials}) == len(trials)
    assert len({t.user_attrs[LEASE]["pid"] for t in trials}) == int(cfg.search.n_workers)
    client = MlflowClient(loc.mlflow_uri)
    exp = client.get_experiment_by_name(str(cfg.tracking.experiment_name))
    parents = client.search_runs([exp.experiment_id], filter_string=f"tags.`{tracking.ROLE}` = 'parent'")
    kids = client.search_runs([exp.experiment_id], filter_string=f"tags.`{tracking.ROLE}` = 'trial'")
    assert len(parents) == 1
    assert {k.data.tags["mlflow.parentRunId"] for k in kids} == {parents[0].info.run_id}
    assert len(kids) == len(trials)


@pytest.mark.slow
@pytest.mark.usefixtures("every_worker_runs_a_trial")
def test_two_local_workers_share_the_journal_study(tiny_cfg) -> None:
    cfg = tiny_cfg("search.n_workers=2", "search.n_trials=4", "pruner=none", study="workers")
    run_sweep(prepare_sweep(cfg), Console(quiet=True))
    check_shared_study(cfg, 4)


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.usefixtures("every_worker_runs_a_trial")
def test_workers_share_a_postgres_study_and_the_password_is_masked(tiny_cfg, tmp_path: Path, pg_url: str) -> None:
    url = pg_url
    study_name = f"pg-{os.getpid()}"
    cfg = tiny_cfg("search.n_workers=2", "search.n_trials=3", "pruner=none", f"tracking.optuna_storage={url}",
                   study=study_name)
    try:
        run_sweep(prepare_sweep(cfg), Console(quiet=True))
        check_shared_study(cfg, 3)
        loc = resolve_locations(cfg.tracking)
        client = MlflowClient(loc.mlflow_uri)
        parent = client.search_runs([client.get_experiment_by_name(study_name).experiment_id],
                                    filter_string=f"tags.`{tracking.ROLE}` = 'parent'")[0]
        password = url.split("://", 1)[1].split("@", 1)[0].split(":", 1)[1]
        logged = " ".join([*parent.data.tags.values(), *parent.data.params.values()])
        assert "storage.optuna_storage" in parent.data.tags
        assert f":{password}@" not in logged and ":***@" in parent.data.tags["storage.optuna_storage"]
        for run_id, name in [(parent.info.run_id, "sweep_config.yaml"),
                             (ensure_study_exists(loc, study_name).trials[0].user_attrs["mlflow_run_id"], "config.yaml")]:
            text = Path(client.download_artifacts(run_id, name, str(tmp_path))).read_text()
            assert ":***@" in text and f":{password}@" not in text
    finally:
        optuna.delete_study(study_name=study_name, storage=url)


def test_the_watcher_reaps_a_worker_that_died_between_two_looks() -> None:
    """A worker found dead before it was reaped is waited for, not taken for "none running": the watcher that
    stopped there never ended the dead worker's trial (a sweep then waited for ever)."""
    pool = object.__new__(workers.WorkerPool)  # the pool's bookkeeping only; its workers are two plain processes
    dead, alive = (multiprocessing.get_context("fork").Process(target=target, args=args)
                   for target, args in ((os._exit, (3,)), (time.sleep, (3600,))))
    dead.start()
    alive.start()
    dead.join()  # died, not reaped yet
    deaths: list[int] = []
    pool.procs, pool._reaped, pool._stopping, pool.crashed = [dead, alive], set(), False, []
    pool._lock, pool.on_death = threading.Lock(), deaths.append
    try:
        assert pool._wait_for_exit() is True  # without waiting for the live one
        pool.reap()
        assert deaths == [dead.pid] and pool.crashed == [(dead.pid, 3)]
        alive.kill()
        alive.join()
        assert pool._wait_for_exit() is True
        pool.reap()
        assert deaths == [dead.pid, alive.pid]
        assert pool._wait_for_exit() is False  # every worker reaped: the watcher may stop
    finally:
        if alive.exitcode is None:
            alive.kill()
