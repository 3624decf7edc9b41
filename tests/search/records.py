"""Helpers for the kill, crash and signal tests: run `convsweep sweep` as a user would, wait for an event
in its stores, and check that the record it leaves is true."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable, Sequence

import optuna
from mlflow.tracking import MlflowClient

from convsweep.dashboards.leaderboard import ranked_trials, trial_reason
from convsweep.search import run_records as rr
from convsweep.search.lease import LEASE
from convsweep.search.recovery import lost_trial_callback
from convsweep.search.storage import (Locations, StorageError, init_mlflow, open_optuna_storage,
                                      resolve_locations)
from convsweep.search.studies import ensure_study_exists

TS = optuna.trial.TrialState
EVENT_TIMEOUT_S = 900  # a generous bound for a loaded 2-core CI machine; the tests wait on events, not on time
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160", "OMP_NUM_THREADS": "1"}


def thread_stacks() -> str:
    """Every thread's stack in this process: what a test that waited in vain prints to say where it hung."""
    names = {t.ident: t.name for t in threading.enumerate()}
    return "\n".join(f"--- {names.get(ident, ident)}\n" + "".join(traceback.format_stack(frame))
                     for ident, frame in sys._current_frames().items())


def start_sweep(args: Sequence[str], log: Path, cwd: Path) -> subprocess.Popen:
    """`convsweep sweep ARGS` in its own process, output to `log`."""
    with log.open("wb") as out:
        return subprocess.Popen([sys.executable, "-m", "convsweep", "sweep", *args], stdout=out,
                                stderr=subprocess.STDOUT, cwd=cwd, env=ENV)


def wait_for_epoch(proc: subprocess.Popen, log: Path, loc: Locations, study_name: str,
                   which: Callable[[optuna.trial.FrozenTrial], bool] = lambda t: True) -> optuna.trial.FrozenTrial:
    """`wait_for_trial_epoch` while the sweep process `proc` runs (its output `log` explains an early end)."""

    def alive() -> None:
        assert proc.poll() is None, f"the sweep ended early ({proc.returncode}):\n{log.read_text()[-3000:]}"

    return wait_for_trial_epoch(loc, study_name, which, alive)


def wait_for_trial_epoch(loc: Locations, study_name: str, which: Callable[[optuna.trial.FrozenTrial], bool],
                         check: Callable[[], None] = lambda: None) -> optuna.trial.FrozenTrial:
    """Block until a RUNNING trial (one `which` accepts) has logged an epoch to its MLflow run: the event a kill
    waits for, so the kill lands mid-trial. The MLflow store is read only once the study has a trial (its
    migrations are done by then). `check()` runs on every poll, e.g. to fail when the sweep died."""
    deadline, client, storage, study = time.monotonic() + EVENT_TIMEOUT_S, None, None, None
    while True:
        check()
        assert time.monotonic() < deadline, f"no epoch logged in {EVENT_TIMEOUT_S} s"
        try:  # one storage for all polls: a storage per poll would hold a PostgreSQL connection each
            storage = storage or open_optuna_storage(loc, create=False)
            study = study or optuna.load_study(study_name=study_name, storage=storage)
            trials = study.get_trials(deepcopy=False, states=(TS.RUNNING,))
        except (StorageError, KeyError):  # no journal file, or no study in it, yet
            trials = []
        for trial in trials:
            run_id = trial.user_attrs.get("mlflow_run_id")
            if run_id and which(trial):
                client = client or MlflowClient(loc.mlflow_uri)
                if client.get_metric_history(run_id, "val/acc"):
                    return trial
        time.sleep(0.2)


def trial_runs(client: MlflowClient, experiment_name: str) -> list:
    exp = client.get_experiment_by_name(experiment_name)
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`{rr.ROLE}` = 'trial'", max_results=1000)


def parent_run(client: MlflowClient, experiment_name: str):  # noqa: ANN201 - an MLflow Run
    exp = client.get_experiment_by_name(experiment_name)
    (parent,) = client.search_runs([exp.experiment_id], filter_string=f"tags.`{rr.ROLE}` = 'parent'")
    return parent


def check_true_record(loc: Locations, study_name: str, experiment_name: str | None = None) -> list[optuna.trial.FrozenTrial]:
    """No trial and no MLflow run RUNNING; trials and runs map one to one, with the same state and reason.

    Returns:
        The study's trials.
    """
    trials = ensure_study_exists(loc, study_name).get_trials(deepcopy=False)
    assert [t.number for t in trials if t.state == TS.RUNNING] == []
    client = MlflowClient(loc.mlflow_uri)
    runs = {r.info.run_id: r for r in trial_runs(client, experiment_name or study_name)}
    assert [r.info.run_name for r in runs.values() if r.info.status == "RUNNING"] == []
    assert parent_run(client, experiment_name or study_name).info.status != "RUNNING"
    ran = [t for t in trials if t.state != TS.WAITING]  # an enqueued retry has no run yet
    by_trial = {t.user_attrs["mlflow_run_id"]: t for t in ran}
    assert set(by_trial) == set(runs) and len(by_trial) == len(ran)  # one run per trial, one trial per run
    for run_id, t in by_trial.items():
        run = runs[run_id]
        assert run.data.tags[rr.TRIAL] == str(t.number)
        assert run.data.tags[rr.STATE] == t.state.name
        interrupted = t.user_attrs.get("reason") == "interrupted"
        assert run.info.status == ("KILLED" if interrupted else rr.MLFLOW_STATUS[t.state.name]), (t.number, run.info.status)
        if t.state != TS.COMPLETE:
            assert run.data.tags[rr.REASON] == trial_reason(t)
    best = ranked_trials(ensure_study_exists(loc, study_name), 1)
    if best:  # the parent's best.* tags say what the study says, whichever worker wrote them last
        tags = parent_run(client, experiment_name or study_name).data.tags
        assert tags["best.run_id"] == best[0].user_attrs["mlflow_run_id"]
        assert tags["best.trial_number"] == str(best[0].number)
    return trials


class Stores:
    """A study and an MLflow store (a copy of the session's migrated one), with trials left RUNNING as a killed
    worker leaves them."""

    def __init__(self, migrated_mlflow_db: Path, run_dir: Path, optuna_url: str | None = None,
                 **storage_kwargs: object) -> None:
        run_dir.mkdir(parents=True)
        shutil.copy(migrated_mlflow_db, run_dir / "mlflow.db")
        self.loc = resolve_locations({"run_dir": str(run_dir), "optuna_storage": optuna_url})
        self.client = init_mlflow(self.loc)
        self.exp = self.client.create_experiment("s")
        self.study = optuna.create_study(study_name="s", direction="maximize", storage=open_optuna_storage(
            self.loc, stale_trial_callback=lost_trial_callback(self.client, lambda: self.exp, retry=True),
            **storage_kwargs))  # type: ignore[arg-type]

    def running(self, lease: dict | None, record_run_id: bool = True) -> optuna.trial.FrozenTrial:
        trial = self.study.ask()
        trial.suggest_int("depth", 1, 3)
        run_id = rr.start_child_run(self.client, self.exp, None, f"trial-{trial.number}", "trial", params={},
                                    tags={rr.STUDY: "s", rr.TRIAL: trial.number}, config_yaml="")
        if record_run_id:
            trial.set_user_attr("mlflow_run_id", run_id)
        if lease is not None:
            trial.set_user_attr(LEASE, lease)
        return self.study.trials[trial.number]

    def run_of(self, trial: optuna.trial.FrozenTrial):  # noqa: ANN201 - an MLflow Run
        (run,) = self.client.search_runs([self.exp], filter_string=f"tags.`{rr.TRIAL}` = '{trial.number}'")
        return run
