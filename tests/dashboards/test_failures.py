"""Why trials did not complete: the reason of each, and the table of reasons after the leaderboard."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState, create_trial
from rich.console import Console

from convsweep.dashboards.leaderboard import WORKER_LOST, failure_counts, failures_table, trial_reason

OOM = "RuntimeError: CUDA out of memory"


def failing_study() -> optuna.Study:
    """One completed trial, and the ways a convsweep trial ends without a result."""
    study = optuna.create_study(direction="maximize")
    study.add_trial(create_trial(value=0.9))
    for _ in range(2):
        study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"reason": OOM}))
    study.add_trial(create_trial(state=TrialState.FAIL))  # failed by Optuna's heartbeat: nothing recorded
    study.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={"reason": "Trial was pruned at epoch 1."}))
    study.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={"invalid_reason": "block3: too narrow"}))
    return study


def test_each_trial_says_why_it_has_no_result() -> None:
    reasons = [trial_reason(t) for t in failing_study().trials]

    assert reasons == [None, OOM, OOM, WORKER_LOST, "Trial was pruned at epoch 1.", "block3: too narrow"]


def test_failures_are_grouped_by_reason_most_common_first_and_drawn() -> None:
    rows = failure_counts(failing_study())

    assert rows[0] == {"state": "FAIL", "reason": OOM, "trials": 2}
    assert {(r["state"], r["reason"], r["trials"]) for r in rows[1:]} == {
        ("FAIL", WORKER_LOST, 1), ("PRUNED", "Trial was pruned at epoch 1.", 1), ("PRUNED", "block3: too narrow", 1)}
    console = Console(record=True, width=160)
    console.print(failures_table(rows, "trials without a result: demo"))
    text = console.export_text()
    assert "trials without a result: demo" in text and OOM in text and WORKER_LOST in text
