"""Kills, crashes, SIGTERM and failing sweeps leave a true record: no trial or MLflow run stays RUNNING,
trials and runs map one to one, every failure says why, and budgets and exit codes are exact.

The fast tests drive `recover` on real stores with trials whose owner is made gone (a dead pid, a
stale heartbeat). The slow ones run `convsweep sweep` as its own process, wait for an event in the
stores (a trial's MLflow run has logged an epoch), then kill or signal it.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from rich.console import Console

from convsweep.dashboards.leaderboard import WORKER_LOST, trial_reason
from convsweep.search import run_records as rr
from convsweep.search.cli import main
from convsweep.search.lease import LEASE, Lease, pid_alive, this_host
from convsweep.search.preflight import prepare_sweep
from convsweep.search.recovery import lost_trials_of, recover
from convsweep.search.run_records import INTERRUPTED
from convsweep.search.storage import resolve_locations
from convsweep.search.studies import ensure_study_exists
from convsweep.search.sweep import run_sweep
from convsweep.search import workers
from convsweep.search.workers import Budget
from tests.search.conftest import tiny_overrides
from tests.search.records import (EVENT_TIMEOUT_S, Stores, check_true_record, parent_run, start_sweep, wait_for_epoch,
                                  thread_stacks, wait_for_trial_epoch)

TS = optuna.trial.TrialState
ENDLESS = "trainer.max_epochs=100000"  # a trial that only a kill or a signal ends


def dead_pid() -> int:
    """The pid of a process of this host that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_recover_ends_trials_whose_owner_is_gone_and_only_those(tmp_path: Path, migrated_mlflow_db: Path) -> None:
    s = Stores(migrated_mlflow_db, tmp_path / "runs")
    now = time.time()
    dead = s.running({"host": this_host(), "pid": dead_pid(), "heartbeat": now})
    stale = s.running({"host": "elsewhere", "pid": 1, "heartbeat": now - 1000})
    unrecorded = s.running({"host": this_host(), "pid": dead_pid(), "heartbeat": now}, record_run_id=False)
    alive = s.running({"host": this_host(), "pid": os.getpid(), "heartbeat": now})
    remote = s.running({"host": "elsewhere", "pid": 1, "heartbeat": now})
    starting = s.running(None)  # asked, not yet leased: within the grace period

    ended = recover(s.study, s.client, s.exp, grace_period=180, retry=True, journal=True)

    assert sorted(ended) == [dead.number, stale.number, unrecorded.number]
    trials = s.study.trials
    for t in (dead, stale, unrecorded):
        assert trials[t.number].state == TS.FAIL and trial_reason(trials[t.number]) == WORKER_LOST
        run = s.run_of(t)
        assert run.info.status == "FAILED" and run.data.tags[rr.REASON] == WORKER_LOST
        assert trials[t.number].user_attrs["mlflow_run_id"] == run.info.run_id  # found by its tags when unrecorded
    for t in (alive, remote, starting):
        assert trials[t.number].state == TS.RUNNING and s.run_of(t).info.status == "RUNNING"
    retried = s.study.get_trials(states=(TS.WAITING,))
    assert sorted((t.user_attrs["retry_of"], t.system_attrs["fixed_params"]["depth"]) for t in retried) == \
        sorted((t.number, t.params["depth"]) for t in (dead, stale, unrecorded))
    assert recover(s.study, s.client, s.exp, grace_period=180, retry=True, journal=True) == []  # once only
    assert len(s.study.get_trials(states=(TS.WAITING,))) == 3
    assert lost_trials_of(s.study, dead.user_attrs[LEASE]["pid"]) == 1  # what that worker gives back to the budget
    assert lost_trials_of(s.study, os.getpid()) == 0


def test_an_interrupted_sweeps_own_trials_end_interrupted_and_killed_not_retried(tmp_path: Path, migrated_mlflow_db: Path) -> None:
    s = Stores(migrated_mlflow_db, tmp_path / "runs")
    mine = s.running({"host": this_host(), "pid": os.getpid(), "heartbeat": time.time()})

    recover(s.study, s.client, s.exp, grace_period=180, retry=True, journal=True, ended_pids={os.getpid()},
            reason=INTERRUPTED)

    trial = s.study.trials[mine.number]
    assert trial.state == TS.FAIL and trial_reason(trial) == INTERRUPTED
    assert s.run_of(mine).info.status == "KILLED"
    assert s.study.get_trials(states=(TS.WAITING,)) == []


def test_a_run_left_running_by_a_trial_that_ended_elsewhere_is_closed_with_its_state(tmp_path: Path, migrated_mlflow_db: Path) -> None:
    s = Stores(migrated_mlflow_db, tmp_path / "runs")
    t = s.running({"host": "elsewhere", "pid": 1, "heartbeat": time.time()})
    s.study.tell(t.number, state=TS.FAIL)  # e.g. failed by Optuna's heartbeat in a process without the callback

    recover(s.study, s.client, s.exp, grace_period=180, retry=False, journal=True)

    run = s.run_of(t)
    assert run.info.status == "FAILED" and run.data.tags[rr.STATE] == "FAIL"
    assert run.data.tags[rr.REASON] == WORKER_LOST


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_rdb_heartbeat_fails_a_silent_trial_and_the_callback_ends_its_run(tmp_path: Path, migrated_mlflow_db: Path) -> None:
    s = Stores(migrated_mlflow_db, tmp_path / "runs", f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=1, grace_period=1)
    t = s.running({"host": "elsewhere", "pid": 1, "heartbeat": time.time()})
    s.study._storage.record_heartbeat(t._trial_id)  # one beat, then silence, as from a lost machine
    deadline = time.monotonic() + 60
    while not s.study._storage._get_stale_trial_ids(s.study._study_id):  # the event: Optuna calls it stale
        assert time.monotonic() < deadline
        time.sleep(0.2)

    recover(s.study, s.client, s.exp, grace_period=1, retry=False, journal=False)

    trial = s.study.trials[t.number]
    assert trial.state == TS.FAIL and trial_reason(trial) == WORKER_LOST
    run = s.run_of(t)
    assert run.info.status == "FAILED" and run.data.tags[rr.REASON] == WORKER_LOST
    assert [w.system_attrs["fixed_params"] for w in s.study.get_trials(states=(TS.WAITING,))] == [trial.params]  # retried


def test_the_lease_beats_while_held_and_stops_with_the_trial(tmp_path: Path, migrated_mlflow_db: Path) -> None:
    s = Stores(migrated_mlflow_db, tmp_path / "runs")
    trial = s.study.ask()
    with Lease(trial, interval=0.05):
        first = s.study.trials[trial.number].user_attrs[LEASE]
        assert (first["host"], first["pid"]) == (this_host(), os.getpid())
        deadline = time.monotonic() + 60
        while s.study.trials[trial.number].user_attrs[LEASE]["heartbeat"] == first["heartbeat"]:
            assert time.monotonic() < deadline, "the lease was not refreshed"
            time.sleep(0.05)
    s.study.tell(trial, 1.0)
    assert pid_alive(os.getpid()) and not pid_alive(dead_pid())


def test_the_budget_is_shared_exactly_and_a_lost_trial_goes_back() -> None:
    budget = Budget(2)
    assert [budget.take() for _ in range(3)] == [True, True, False]
    budget.give_back(1)
    assert budget.take() and not budget.take()


def test_refusals_before_training_are_given_back_up_to_the_cap() -> None:
    budget = Budget(1, max_refused=2)
    assert budget.take() and not budget.take()
    assert [budget.refund_refused() for _ in range(3)] == [True, True, False]  # the third refusal counts
    assert [budget.take() for _ in range(3)] == [True, True, False]


@pytest.mark.slow
def test_sigkill_mid_trial_then_resume_ends_the_lost_trial_and_retries_it(tmp_path: Path, tiny_cfg) -> None:
    log = tmp_path / "sweep.log"
    proc = start_sweep(tiny_overrides(tmp_path / "runs", "kill", "search.n_trials=2", "pruner=none", ENDLESS), log, tmp_path)
    cfg = tiny_cfg("pruner=none", "search.n_trials=2", "search.retry_lost=true", study="kill")
    loc = resolve_locations(cfg.tracking)
    killed = wait_for_epoch(proc, log, loc, "kill")
    proc.kill()
    proc.wait()
    assert ensure_study_exists(loc, "kill").trials[killed.number].state == TS.RUNNING  # what the journal leaves alone

    summary = run_sweep(prepare_sweep(cfg), Console(quiet=True))

    trials = check_true_record(loc, "kill")
    assert trials[killed.number].state == TS.FAIL and trial_reason(trials[killed.number]) == WORKER_LOST
    added = trials[killed.number + 1:]
    assert len(added) == 2 and [t.state for t in added] == [TS.COMPLETE] * 2  # exactly n_trials; the lost one is not one
    assert [t.params for t in added if t.user_attrs.get("retry_of") == killed.number] == [killed.params]
    assert (summary.n_complete, summary.n_failed, summary.status) == (2, 0, "FINISHED")
    assert parent_run(MlflowClient(loc.mlflow_uri), "kill").info.status == "FINISHED"


@pytest.mark.slow
def test_recover_command_ends_a_killed_sweeps_trial_and_parent_run(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    log, run_dir = tmp_path / "sweep.log", tmp_path / "runs"
    proc = start_sweep(tiny_overrides(run_dir, "rec", "search.n_trials=2", "pruner=none", ENDLESS), log, tmp_path)
    loc = resolve_locations({"run_dir": str(run_dir)})
    killed = wait_for_epoch(proc, log, loc, "rec")
    proc.kill()
    proc.wait()

    code = main(["recover", "--study", "rec", f"tracking.run_dir={run_dir}", "search.retry_lost=true"])

    out = capsys.readouterr().out
    assert code == 0 and f"trial {killed.number}: FAIL (worker lost)" in out
    assert "1 lost trial(s) ended, their params enqueued again" in out
    check_true_record(loc, "rec")
    assert parent_run(MlflowClient(loc.mlflow_uri), "rec").info.status == "KILLED"
    waiting = ensure_study_exists(loc, "rec").get_trials(states=(TS.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting] == [killed.params]  # enqueued again


@pytest.mark.slow
def test_sigterm_stops_the_workers_ends_their_trials_interrupted_and_exits_130(tmp_path: Path) -> None:
    log, run_dir = tmp_path / "sweep.log", tmp_path / "runs"
    proc = start_sweep(tiny_overrides(run_dir, "term", "search.n_trials=4", "search.n_workers=2", "pruner=none", ENDLESS),
                       log, tmp_path)
    loc = resolve_locations({"run_dir": str(run_dir)})
    wait_for_epoch(proc, log, loc, "term", lambda t: t.user_attrs[LEASE]["pid"] == proc.pid)
    worker = wait_for_epoch(proc, log, loc, "term", lambda t: t.user_attrs[LEASE]["pid"] != proc.pid)

    proc.send_signal(signal.SIGTERM)  # what a cluster scheduler sends

    assert proc.wait(timeout=EVENT_TIMEOUT_S) == 130, log.read_text()[-3000:]
    trials = check_true_record(loc, "term")
    interrupted = [t for t in trials if trial_reason(t) == INTERRUPTED]
    assert len(interrupted) == 2 and {t.state for t in interrupted} == {TS.FAIL}  # the main process's and the worker's
    assert parent_run(MlflowClient(loc.mlflow_uri), "term").info.status == "KILLED"
    assert not pid_alive(worker.user_attrs[LEASE]["pid"])  # the worker was stopped, not left behind
    text = log.read_text()
    assert "interrupted: finished trials are kept" in text and "Traceback" not in text


@pytest.mark.slow
def test_a_worker_killed_mid_trial_is_ended_at_once_given_back_and_fails_the_sweep(
        tiny_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny_cfg("search.n_workers=2", "search.n_trials=3", "pruner=none", ENDLESS, study="crash")
    loc = resolve_locations(cfg.tracking)
    killed: list[optuna.trial.FrozenTrial] = []
    make_objective = workers.make_objective

    def main_process_objective(plan: Any, *args: Any) -> Callable[[optuna.Trial], Any]:
        """In the sweep's main process only: short trials, and before the first one, SIGKILL the spawned
        worker mid-trial (its trials are endless) and wait until the sweep has ended that trial."""
        objective = make_objective(dataclasses.replace(plan, cfg=OmegaConf.merge(plan.cfg, {"trainer": {"max_epochs": 2}})), *args)

        def run(trial: optuna.Trial) -> Any:
            if not killed:
                lost = wait_for_trial_epoch(loc, "crash", lambda t: t.user_attrs[LEASE]["pid"] != os.getpid())
                os.kill(lost.user_attrs[LEASE]["pid"], signal.SIGKILL)
                killed.append(lost)
                deadline = time.monotonic() + EVENT_TIMEOUT_S
                while trial.study.trials[lost.number].state == TS.RUNNING:  # the event: the sweep's watcher ends it
                    assert time.monotonic() < deadline, "the dead worker's trial was not ended\n" + thread_stacks()
                    time.sleep(0.2)
            return objective(trial)

        return run

    monkeypatch.setattr(workers, "make_objective", main_process_objective)  # spawned workers import afresh

    summary = run_sweep(prepare_sweep(cfg), Console(quiet=True))

    (lost,) = killed
    trials = check_true_record(loc, "crash")
    assert trials[lost.number].state == TS.FAIL and trial_reason(trials[lost.number]) == WORKER_LOST
    counted = [t for t in trials if t.number != lost.number]
    assert len(counted) == 3 and {t.state for t in counted} == {TS.COMPLETE}  # exact budget: the lost one was given back
    assert summary.status == "FAILED" and summary.crashed == [(lost.user_attrs[LEASE]["pid"], -9)]
    assert parent_run(MlflowClient(loc.mlflow_uri), "crash").info.status == "FAILED"


@pytest.mark.slow
def test_a_sweep_whose_every_trial_fails_exits_1_and_its_parent_run_failed(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs"
    out = subprocess.run([sys.executable, "-m", "convsweep", "sweep", *tiny_overrides(
        run_dir, "allfail", "search.n_trials=2", "search_space.depth=4", "search_space.block.downsample=maxpool",
        "search.fail_on_collapse=failed")], capture_output=True, text=True, cwd=tmp_path, timeout=EVENT_TIMEOUT_S,
        env={**os.environ, "COLUMNS": "160"})

    assert out.returncode == 1, out.stderr[-3000:]
    loc = resolve_locations({"run_dir": str(run_dir)})
    trials = check_true_record(loc, "allfail")
    assert [t.state for t in trials] == [TS.FAIL] * 2
    assert all("invalid architecture: block4" in trial_reason(t) for t in trials)
    assert parent_run(MlflowClient(loc.mlflow_uri), "allfail").info.status == "FAILED"
    assert "every trial of this sweep failed" in out.stdout and "invalid architecture: block4" in out.stdout


def test_two_machines_that_create_the_parent_run_at_once_both_keep_the_earliest(migrated_mlflow_db: Path,
                                                                               tmp_path: Path) -> None:
    from convsweep.search.parent_run import start_parent_run

    s = Stores(migrated_mlflow_db, tmp_path / "runs")
    first, resumed = start_parent_run(s.client, s.exp, "s", params={}, tags={})

    class LateLooker:
        """A second machine that looked for the parent run just before the first one made it."""

        def __init__(self, client: MlflowClient) -> None:
            self.client, self.looked = client, False

        def __getattr__(self, name: str) -> Any:
            return getattr(self.client, name)

        def search_runs(self, *args: Any, **kwargs: Any) -> list:
            if not self.looked:
                self.looked = True
                return []
            return self.client.search_runs(*args, **kwargs)

    second, adopted = start_parent_run(LateLooker(s.client), s.exp, "s", params={}, tags={})

    assert (resumed, adopted, second) == (False, True, first)
    parents = s.client.search_runs([s.exp], filter_string=f"tags.`{rr.ROLE}` = 'parent'")
    assert [r.info.run_id for r in parents] == [first]  # the second machine's own run was deleted
