"""The ask-ahead loop: the next trial is asked and sampled while the current one runs, and every trial ends true.

The loop's own tests drive a real Optuna study with trial steps that record what they see; the
sweep test runs the real objective on digits with `search.ask_ahead=true`.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from rich.console import Console

from convsweep.dashboards.leaderboard import NOT_STARTED, WORKER_LOST, trial_reason
from convsweep.errors import ConvsweepError
from convsweep.search.ask_ahead import AskAheadLoop
from convsweep.search.lease import LEASE, Lease
from convsweep.search.objective import TrialSteps
from convsweep.search.preflight import prepare_sweep, resolve_ask_ahead
from convsweep.search.recovery import lost_trials_of, recover
from convsweep.search.schema import check_config
from convsweep.search.storage import resolve_locations
from convsweep.search.studies import ensure_study_exists
from convsweep.search.summary import summarize
from convsweep.search.sweep import run_sweep
from convsweep.search.workers import TRIAL_ERRORS

WAIT_S = 120  # generous: a wait that never ends fails the test instead of hanging it; nothing is timed


class Budget:
    """A plain counter for the loop's claim/give_back."""

    def __init__(self, n: int) -> None:
        self.left, self.given_back = n, 0

    def take(self) -> bool:
        if self.left <= 0:
            return False
        self.left -= 1
        return True

    def give_back(self) -> None:
        self.left += 1
        self.given_back += 1


def events() -> list[threading.Event]:
    """One per trial number: set once that trial is asked, leased and sampled."""
    return [threading.Event() for _ in range(10)]


def steps(run: Callable[[optuna.Trial, Any], Any], asked: list[threading.Event] | None = None,
          sample: Callable[[optuna.Trial], Any] | None = None, rdb: bool = False) -> TrialSteps:
    """Trial steps with a one-parameter space."""

    def sample_x(trial: optuna.Trial) -> Any:
        x = trial.suggest_float("x", 0.0, 1.0) if sample is None else sample(trial)
        if asked is not None:
            asked[trial.number].set()
        return x

    return TrialSteps(lambda trial: Lease(trial, 3600.0, rdb_heartbeat=rdb), sample_x, run)


def loop(study: optuna.Study, trial_steps: TrialSteps, seen: list[optuna.trial.FrozenTrial] | None = None) -> AskAheadLoop:
    return AskAheadLoop(study, trial_steps, [lambda _s, t: seen.append(t)] if seen is not None else [], TRIAL_ERRORS)


def wait_for(event: threading.Event) -> None:
    assert event.wait(WAIT_S), f"the next trial was not asked within {WAIT_S} s"


def test_the_next_trial_is_asked_and_sampled_while_the_current_one_runs() -> None:
    study = optuna.create_study()
    asked, during = events(), {}

    def run(trial: optuna.Trial, x: float) -> float:
        if trial.number == 0:
            wait_for(asked[1])  # trial 1 is asked and sampled while trial 0 still runs
            other = study.get_trials(deepcopy=False)[1]
            during.update(state=other.state, params=dict(other.params), lease=other.user_attrs.get(LEASE))
        return x

    seen: list[optuna.trial.FrozenTrial] = []
    budget = Budget(3)
    loop(study, steps(run, asked), seen).run(budget.take, budget.give_back, lambda: False)
    assert during["state"] == optuna.trial.TrialState.RUNNING and set(during["params"]) == {"x"}
    assert during["lease"]["pid"] > 0  # leased from its ask: a killed worker's waiting trial is found lost
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] * 3  # exactly the budget, no trial left waiting
    assert [t.value for t in trials] == [t.params["x"] for t in trials]
    assert [t.number for t in seen] == [0, 1, 2] and all(t.state.is_finished() for t in seen)  # callbacks see finished trials
    assert budget.left == 0 and budget.given_back == 0


def test_an_interrupt_ends_the_current_trial_and_the_waiting_one_is_not_started() -> None:
    study = optuna.create_study()
    asked = events()

    def run(trial: optuna.Trial, x: float) -> float:
        if trial.number == 1:
            wait_for(asked[2])
            raise KeyboardInterrupt
        return x

    budget = Budget(5)
    with pytest.raises(KeyboardInterrupt):
        loop(study, steps(run, asked)).run(budget.take, budget.give_back, lambda: False)
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE] + [optuna.trial.TrialState.FAIL] * 2
    assert trials[2].user_attrs["reason"] == f"{NOT_STARTED}: interrupted"
    assert budget.given_back == 1 and budget.left == 5 - 3 + 1  # the trial that never started does not count
    summary = summarize(study, 0, "parent", resolve_locations(OmegaConf.create({"run_dir": "unused"})), False,
                        owners={os.getpid()}, crashed=[])
    assert (summary.n_complete, summary.n_failed, summary.n_not_started, summary.status) == (1, 2, 1, "FINISHED")


def test_a_timeout_while_a_trial_waits_ends_it_not_started() -> None:
    study = optuna.create_study()
    asked, expired = events(), threading.Event()

    def run(trial: optuna.Trial, x: float) -> float:
        wait_for(asked[1])
        expired.set()  # search.timeout passes while trial 0 runs and trial 1 waits
        return x

    budget = Budget(5)
    loop(study, steps(run, asked)).run(budget.take, budget.give_back, expired.is_set)
    trials = study.get_trials()
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]
    assert trials[1].user_attrs["reason"] == f"{NOT_STARTED}: search.timeout passed while it waited"
    assert budget.given_back == 1


def test_errors_end_their_trial_and_only_uncaught_ones_stop_the_loop() -> None:
    study = optuna.create_study()

    def sample(trial: optuna.Trial) -> float:
        if trial.number == 0:
            raise ConvsweepError("space cannot be sampled")  # caught: trial 0 ends FAIL at its turn, the loop goes on
        return trial.suggest_float("x", 0.0, 1.0)

    def run(trial: optuna.Trial, x: float) -> float:
        if trial.number == 2:
            raise ValueError("a bug")  # not in TRIAL_ERRORS: the loop stops after telling the trial FAIL
        if trial.number == 1:
            raise optuna.TrialPruned("pruned at epoch 0")
        return x

    budget = Budget(6)
    with pytest.raises(ValueError, match="a bug"):
        loop(study, steps(run, sample=sample)).run(budget.take, budget.give_back, lambda: False)
    states = [t.state.name for t in study.get_trials()]
    assert states == ["FAIL", "PRUNED", "FAIL", "FAIL"]
    assert study.get_trials()[3].user_attrs["reason"] == f"{NOT_STARTED}: the worker stopped (ValueError)"
    assert budget.given_back == 1


def test_a_trial_asked_ahead_beats_optunas_rdb_heartbeat_while_it_waits(tmp_path: Path) -> None:
    """study.optimize beats only for the trial it runs; a trial waiting its turn beats through its lease, again
    and again (its heartbeat's time moves on), so Optuna's stale-trial check leaves it RUNNING."""
    db = tmp_path / "optuna.db"
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}", heartbeat_interval=60, grace_period=120)
    study = optuna.create_study(storage=storage, study_name="beat")
    asked, seen = events(), {}

    def beats() -> dict[int, str]:
        with sqlite3.connect(db) as conn:
            return dict(conn.execute("SELECT trial_id, heartbeat FROM trial_heartbeats").fetchall())

    def run(trial: optuna.Trial, x: float) -> float:
        if trial.number == 0:
            wait_for(asked[1])
            waiting = study.get_trials(deepcopy=False)[1]._trial_id  # noqa: SLF001 - the heartbeat table's key
            first = beats()
            seen["ids"] = set(first)
            deadline = time.monotonic() + WAIT_S
            while beats().get(waiting) == first.get(waiting):  # the event: the waiting trial's lease beat again
                assert time.monotonic() < deadline, "the waiting trial's heartbeat never moved on"
                time.sleep(0.05)
            optuna.storages.fail_stale_trials(study)
            seen["waiting"] = study.get_trials(deepcopy=False)[1].state
        return x

    budget = Budget(2)
    trial_steps = steps(run, asked, rdb=True)
    loop(study, TrialSteps(lambda trial: Lease(trial, 0.2, rdb_heartbeat=True), trial_steps.sample, trial_steps.run)
         ).run(budget.take, budget.give_back, lambda: False)
    ids = {t._trial_id for t in study.get_trials()}  # noqa: SLF001
    assert seen["ids"] == ids  # both: the running trial and the one asked ahead
    assert seen["waiting"] == optuna.trial.TrialState.RUNNING
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE", "COMPLETE"]


def test_an_ask_that_fails_gives_its_claim_back_once_and_leaves_no_trial_running() -> None:
    study = optuna.create_study()
    real_ask, asks = study.ask, []

    def ask(*args: Any, **kwargs: Any) -> optuna.Trial:
        asks.append(1)
        if len(asks) == 2:
            raise RuntimeError("store unreachable")
        return real_ask(*args, **kwargs)

    study.ask = ask  # type: ignore[method-assign]
    budget = Budget(5)
    with pytest.raises(RuntimeError, match="store unreachable"):
        loop(study, steps(lambda trial, x: x)).run(budget.take, budget.give_back, lambda: False)
    assert [t.state.name for t in study.get_trials()] == ["COMPLETE"]
    assert budget.given_back == 1 and budget.left == 5 - 2 + 1


def test_a_waiting_trial_that_cannot_be_told_keeps_its_claim_for_the_recovery() -> None:
    """Given back only once it is recorded `not started`; else the recovery ends it `worker lost` and gives it back."""
    study = optuna.create_study()
    asked, real_tell = events(), study.tell

    def tell(trial: Any, values: Any = None, state: Any = None, **kwargs: Any) -> Any:
        if state == optuna.trial.TrialState.FAIL and getattr(trial, "number", None) == 1:
            raise RuntimeError("store unreachable")
        return real_tell(trial, values, state=state, **kwargs)

    def run(trial: optuna.Trial, x: float) -> float:
        wait_for(asked[1])
        raise KeyboardInterrupt

    study.tell = tell  # type: ignore[method-assign]
    budget = Budget(5)
    with pytest.raises(KeyboardInterrupt):
        loop(study, steps(run, asked)).run(budget.take, budget.give_back, lambda: False)
    assert [t.state.name for t in study.get_trials()] == ["FAIL", "RUNNING"]
    assert budget.given_back == 0


def test_ask_ahead_resolves_auto_refuses_grid_and_gp_and_is_typed(tiny_cfg) -> None:
    cfg = tiny_cfg("trainer.accelerator=cpu")
    assert cfg.search.ask_ahead == "auto"
    assert resolve_ask_ahead(cfg) is False and cfg.search.ask_ahead is False  # auto: off on CPU
    for sampler in ("grid", "gp"):
        with pytest.raises(ConvsweepError, match=f"search.ask_ahead=true does not work with sampler={sampler} "):
            resolve_ask_ahead(tiny_cfg("search.ask_ahead=true", f"sampler={sampler}"))
        assert resolve_ask_ahead(tiny_cfg(f"sampler={sampler}")) is False  # auto, whatever the device
    assert resolve_ask_ahead(tiny_cfg("search.ask_ahead=true")) is True
    bad = tiny_cfg()
    OmegaConf.update(bad, "search.ask_ahead", "sometimes")
    with pytest.raises(ConvsweepError, match="search.ask_ahead"):
        check_config(bad)


@pytest.mark.slow
def test_a_sweep_that_asks_ahead_records_every_trial_once(tiny_cfg) -> None:
    cfg = tiny_cfg("search.ask_ahead=true", "search.n_trials=4", "search.max_macs=null", study="ahead")
    run_sweep(prepare_sweep(cfg), Console(quiet=True))
    loc = resolve_locations(cfg.tracking)
    trials = ensure_study_exists(loc, "ahead").get_trials()
    assert len(trials) == 4 and all(t.state.is_finished() for t in trials)
    assert any(b.datetime_start < a.datetime_complete for a, b in zip(trials, trials[1:]))  # asked while one ran
    client = MlflowClient(loc.mlflow_uri)
    runs = {t.number: client.get_run(t.user_attrs["mlflow_run_id"]) for t in trials}
    for t in trials:
        expected = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}[t.state.name]
        assert runs[t.number].info.status == expected
        assert runs[t.number].data.params["seed"] == str(int(cfg.search.seed) + t.number)


KILLED_WORKER = """
import sys, threading, time
from types import SimpleNamespace
import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from convsweep.search.ask_ahead import AskAheadLoop
from convsweep.search.lease import Lease

study = optuna.create_study(study_name="killed", storage=JournalStorage(JournalFileBackend(sys.argv[1])))
asked = [threading.Event() for _ in range(3)]

def sample(trial):
    x = trial.suggest_float("x", 0.0, 1.0)
    asked[trial.number].set()
    return x

def run(trial, x):
    asked[1].wait()
    print("trial 0 runs, trial 1 waits", flush=True)
    time.sleep(3600)  # killed here

steps = SimpleNamespace(lease=lambda t: Lease(t, 3600.0), sample=sample, run=run)  # TrialSteps without torch's import
AskAheadLoop(study, steps, [], (RuntimeError,)).run(lambda: True, lambda: None, lambda: False)
"""


def test_a_killed_worker_loses_its_waiting_trial_too_and_both_are_given_back(tmp_path: Path, mlflow_client: Any) -> None:
    journal = tmp_path / "journal.log"
    worker = subprocess.Popen([sys.executable, "-c", KILLED_WORKER, str(journal)], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "trial 0 runs, trial 1 waits"
    finally:
        worker.kill()
        worker.wait()
    study = optuna.load_study(study_name="killed", storage=JournalStorage(JournalFileBackend(str(journal))))
    assert [t.state.name for t in study.get_trials()] == ["RUNNING", "RUNNING"]
    ended = recover(study, mlflow_client, None, grace_period=3600, retry=False, journal=True)
    assert ended == [0, 1]  # found by the lease's pid at once, without waiting for the grace period
    assert [trial_reason(t) for t in study.get_trials()] == [WORKER_LOST] * 2
    assert lost_trials_of(study, worker.pid) == 2  # what the sweep gives back to its budget: both were claimed
