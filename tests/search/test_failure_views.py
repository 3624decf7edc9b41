"""Every failure is visible where a user looks: the live line of each trial and `convsweep best`."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState, create_trial
from rich.console import Console

from convsweep.search.best import print_failures
from convsweep.search.live_view import SweepProgress

OOM = "RuntimeError: CUDA out of memory"


def study() -> optuna.Study:
    s = optuna.create_study(study_name="views", direction="maximize")
    s.add_trial(create_trial(value=0.75))
    s.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"reason": f"Traceback...\n{OOM}"}))
    s.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"reason": OOM}))
    s.add_trial(create_trial(state=TrialState.FAIL))  # failed from outside its worker
    return s


def test_the_live_line_of_a_failed_trial_gives_its_reason() -> None:
    console = Console(record=True, width=200)

    SweepProgress(study(), 0, 4, "val/acc", console).poll()

    lines = console.export_text().splitlines()
    assert "val/acc=0.7500" in lines[0]
    assert OOM in lines[1] and "Traceback" not in lines[1]  # the last line of a multi-line reason
    assert "worker lost" in lines[3]


def test_best_prints_how_many_trials_failed_and_why() -> None:
    console = Console(record=True, width=200)

    print_failures(study(), console)

    assert console.export_text().strip() == (f"3 failed trial(s) in study views; most common reasons: {OOM} (x2); "
                                             "worker lost (x1)")
