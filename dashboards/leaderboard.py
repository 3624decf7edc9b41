"""The sweep's best trials as plain rows, and the same rows as a rich table for the terminal.

Rows are plain dicts so the CLI, tests and a JSON dump all read the same thing; ranking uses
the study's own direction for the first objective, which is the sweep's metric.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Mapping, Sequence

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from rich.table import Table


def _architecture(trial: FrozenTrial) -> tuple[int | None, list[int]]:
    """(depth, per-block filters) from the trial's `filters` attr, which also covers a fixed depth and
    pyramid widths; from the sampled `depth` and `block<i>.filters` params for trials without one."""
    filters = trial.user_attrs.get("filters")
    if filters:
        return len(filters), [int(f) for f in filters]
    depth = trial.params.get("depth")
    names = (f"block{i}.filters" for i in range(1, int(depth or 0) + 1))
    return depth, [trial.params[name] for name in names if name in trial.params]


def _row(rank: int, trial: FrozenTrial) -> dict[str, Any]:
    depth, filters = _architecture(trial)
    duration = trial.user_attrs.get("duration_s")
    if duration is None and trial.duration is not None:
        duration = trial.duration.total_seconds()
    return {"rank": rank, "number": trial.number, "value": trial.values[0], "depth": depth,
            "filters": "-".join(map(str, filters)), "params_count": trial.user_attrs.get("params_count"),
            "duration_s": duration, "mlflow_run_id": trial.user_attrs.get("mlflow_run_id")}


def leaderboard(study: optuna.Study, metric: str, k: int = 10) -> list[dict[str, Any]]:
    """The top-k completed trials, best first by the study's direction.

    Args:
        study: a convsweep study (multi-objective: ranked by the first objective).
        metric: the sweep's metric; documents what `value` is (rows carry it as `metric`).
        k: how many rows.

    Returns:
        Rows with rank, number, value, metric, depth, filters ("16-32-64"), params_count,
        duration_s and mlflow_run_id (None where the trial did not record one).
    """
    return [{**_row(rank, t), "metric": metric} for rank, t in enumerate(ranked_trials(study, k), start=1)]


def ranked_trials(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """The k best completed trials, best first by the study's (first) direction."""
    maximize = study.directions[0] == StudyDirection.MAXIMIZE
    done = sorted(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
                  key=lambda t: t.values[0], reverse=maximize)
    return done[:k]


def state_counts(study: optuna.Study) -> dict[str, int]:
    """Trials per state ("COMPLETE", "PRUNED", "FAIL", ...): how much of the sweep the board leaves out."""
    return dict(Counter(t.state.name for t in study.get_trials(deepcopy=False)))


def _number(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def leaderboard_table(rows: Sequence[Mapping[str, Any]], metric: str, title: str,
                      states: Mapping[str, int] | None = None) -> Table:
    """Render `leaderboard` rows; `states` (from `state_counts`) goes in the caption.

    Args:
        rows: from `leaderboard`.
        metric: heads the value column.
        title: e.g. the study name.
        states: trial counts per state, shown under the table.
    """
    caption = ", ".join(f"{n} {state.lower()}" for state, n in sorted(states.items())) if states else None
    table = Table(title=title, caption=caption)
    for name, justify in (("#", "right"), ("trial", "right"), (metric, "right"), ("depth", "right"),
                          ("filters", "left"), ("params", "right"), ("time (s)", "right"), ("MLflow run", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(str(row["rank"]), str(row["number"]), f"{row['value']:.4f}", _number(row["depth"], "d"),
                      row["filters"] or "-", _number(row["params_count"], ","), _number(row["duration_s"], ".1f"),
                      row["mlflow_run_id"] or "-")
    return table
