"""What a finished sweep reports back to the CLI."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Collection

import optuna

from convsweep.dashboards.leaderboard import not_started, ranked_trials, refused_before_training
from convsweep.search.lease import LEASE, this_host
from convsweep.search.storage import Locations


@dataclass
class SweepSummary:
    """Counts and the best trial of the trials this invocation added, and how it ended.

    `status` is the parent run's: FAILED when a worker process crashed, or when no trial
    completed and some failed (the CLI exits 1); FINISHED otherwise (exit 0).
    """

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
    status: str = "FINISHED"
    crashed: list[tuple[int, int]] = field(default_factory=list)  # (pid, exit code) of crashed workers
    n_refused: int = 0  # of n_pruned: refused before training (collapsed or over budget)
    n_not_started: int = 0  # of n_failed: asked ahead, then the sweep stopped before their turn (search.ask_ahead)


def summarize(study: optuna.Study, first: int, parent_id: str, loc: Locations, resumed: bool,
              owners: Collection[int], crashed: list[tuple[int, int]]) -> SweepSummary:
    """Summarise the trials numbered `first` and later that this host's processes `owners` ran (other
    machines may add trials to the same study meanwhile); the best is study-wide."""
    host = this_host()
    trials = [t for t in study.get_trials(deepcopy=False) if t.number >= first
              and (t.user_attrs.get(LEASE) or {}).get("host") == host and t.user_attrs[LEASE].get("pid") in owners]
    TS = optuna.trial.TrialState
    waited = sum(not_started(t) for t in trials)
    count = lambda s: sum(t.state == s for t in trials)  # noqa: E731
    best = ranked_trials(study, 1)  # by the metric, also in a multi-objective study
    if best:
        best_value, best_params, best_run = float(best[0].values[0]), dict(best[0].params), best[0].user_attrs.get("mlflow_run_id")
    else:
        best_value, best_params, best_run = None, {}, None
    return SweepSummary(study.study_name, count(TS.COMPLETE), count(TS.PRUNED), count(TS.FAIL), best_value,
                        best_params, best_run, parent_id, loc, resumed,
                        "FAILED" if crashed or (count(TS.FAIL) > waited and not count(TS.COMPLETE)) else "FINISHED",
                        crashed, sum(refused_before_training(t) for t in trials), waited)
