"""What a finished sweep reports back to the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

from convsweep.search.storage import Locations


@dataclass
class SweepSummary:
    """Counts and the best trial of the trials this invocation added."""

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


def summarize(study: optuna.Study, first: int, parent_id: str, loc: Locations, resumed: bool) -> SweepSummary:
    """Summarise the trials numbered `first` and later; the best is study-wide."""
    trials = [t for t in study.get_trials(deepcopy=False) if t.number >= first]
    TS = optuna.trial.TrialState
    count = lambda s: sum(t.state == s for t in trials)  # noqa: E731
    try:
        best = study.best_trial
        best_value, best_params, best_run = float(best.value), dict(best.params), best.user_attrs.get("mlflow_run_id")
    except ValueError:
        best_value, best_params, best_run = None, {}, None
    return SweepSummary(study.study_name, count(TS.COMPLETE), count(TS.PRUNED), count(TS.FAIL), best_value,
                        best_params, best_run, parent_id, loc, resumed)
