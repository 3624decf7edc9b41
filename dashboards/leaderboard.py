"""The sweep's best trials as plain rows, and the same rows as a rich table for the terminal.

Rows are plain dicts so the CLI, tests and a JSON dump all read the same thing; ranking uses
the study's own direction for the first objective, which is the sweep's metric. In a
multi-objective study the board puts the Pareto front first (rank 1), then the trials only
the front dominates (rank 2), and so on; within a rank, by the metric.
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


def pareto_ranks(values: Sequence[Sequence[float]], maximize: Sequence[bool]) -> list[int]:
    """Non-dominated sorting: 1 for the Pareto front, 2 for the front of what is left, and so on.

    A point dominates another when it is at least as good in every objective and better in one.

    Args:
        values: one row of objective values per trial.
        maximize: per objective, whether higher is better.

    Returns:
        The rank of each row, in the order given.
    """
    signs = [1.0 if m else -1.0 for m in maximize]
    points = [[s * v for s, v in zip(signs, row)] for row in values]  # higher is better in every column

    def dominates(a: list[float], b: list[float]) -> bool:
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    ranks = [0] * len(points)
    left, rank = set(range(len(points))), 0
    while left:
        rank += 1
        front = {i for i in left if not any(dominates(points[j], points[i]) for j in left)}
        for i in front:
            ranks[i] = rank
        left -= front
    return ranks


def format_cost(value: float) -> str:
    """A cost objective for a table cell: whole numbers for counts (12,345), 3 digits for small ones (0.412)."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _row(rank: int, trial: FrozenTrial, pareto_rank: int | None, names: Sequence[str]) -> dict[str, Any]:
    depth, filters = _architecture(trial)
    duration = trial.user_attrs.get("duration_s")
    if duration is None and trial.duration is not None:
        duration = trial.duration.total_seconds()
    return {"rank": rank, "number": trial.number, "value": trial.values[0], "depth": depth,
            "filters": "-".join(map(str, filters)), "params_count": trial.user_attrs.get("params_count"),
            "duration_s": duration, "mlflow_run_id": trial.user_attrs.get("mlflow_run_id"),
            "pareto_rank": pareto_rank, "objectives": dict(zip(names[1:], trial.values[1:]))}


def leaderboard(study: optuna.Study, metric: str, k: int = 10) -> list[dict[str, Any]]:
    """The top-k completed trials, best first by the study's direction; multi-objective: Pareto front first.

    Args:
        study: a convsweep study (multi-objective: by Pareto rank, then by the first objective).
        metric: the sweep's metric; documents what `value` is (rows carry it as `metric`).
        k: how many rows.

    Returns:
        Rows with rank, number, value, metric, depth, filters ("16-32-64"), params_count,
        duration_s and mlflow_run_id (None where the trial did not record one); in a
        multi-objective study also pareto_rank (1 = on the front) and objectives (the other
        objectives' values by name; empty otherwise).
    """
    done = ranked_trials(study, None)
    maximize = [d == StudyDirection.MAXIMIZE for d in study.directions]
    ranks = pareto_ranks([t.values for t in done], maximize) if len(maximize) > 1 else [None] * len(done)
    board = sorted(zip(done, ranks), key=lambda pair: pair[1] or 0)  # stable: by the metric within a rank
    names = study.metric_names or [metric] + [f"objective {i}" for i in range(1, len(maximize))]
    return [{**_row(rank, t, pareto_rank, names), "metric": metric}
            for rank, (t, pareto_rank) in enumerate(board[:k], start=1)]


def ranked_trials(study: optuna.Study, k: int | None) -> list[FrozenTrial]:
    """The k best completed trials (None: all), best first by the study's (first) direction."""
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
    pareto = any(row.get("pareto_rank") is not None for row in rows)
    # the other objectives, except model/params, which the params column shows already
    extra = [n for n in (rows[0].get("objectives", {}) if rows else {}) if n != "model/params"]
    for name, justify in (("#", "right"), ("trial", "right"), *((("Pareto rank", "right"),) if pareto else ()),
                          (metric, "right"), *((n, "right") for n in extra), ("depth", "right"), ("filters", "left"),
                          ("params", "right"), ("time (s)", "right"), ("MLflow run", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(str(row["rank"]), str(row["number"]), *([str(row["pareto_rank"])] if pareto else []),
                      f"{row['value']:.4f}", *(format_cost(row["objectives"][n]) for n in extra),
                      _number(row["depth"], "d"), row["filters"] or "-", _number(row["params_count"], ","),
                      _number(row["duration_s"], ".1f"), row["mlflow_run_id"] or "-")
    return table


# A FAIL trial with no recorded reason was failed from outside its worker (Optuna's heartbeat, or
# a recovery): every path inside a worker records why before the trial ends.
WORKER_LOST = "worker lost"


def trial_reason(trial: FrozenTrial) -> str | None:
    """Why a trial did not complete: its `reason` attr (also the run's `convsweep.reason` tag), else the
    `invalid_reason` of an architecture that could not be built; None for a trial that completed or runs."""
    reason = trial.user_attrs.get("reason") or trial.user_attrs.get("invalid_reason")
    if reason:
        return str(reason)
    return WORKER_LOST if trial.state == TrialState.FAIL else None


MODEL_URI = "convsweep.model_uri"  # a trial run's tag: its logged model, set once the model is in the store


def trial_model_uri(client: Any, trial: FrozenTrial) -> str | None:
    """A trial's logged model: its run's `convsweep.model_uri` tag (search/model_queue.py logs models after the
    trial ends), or the `model_uri` attr of studies made before that; None when it has none, or not yet."""
    uri = trial.user_attrs.get("model_uri")
    run_id = trial.user_attrs.get("mlflow_run_id")
    if uri or not run_id:
        return uri
    return client.get_run(run_id).data.tags.get(MODEL_URI)


NOT_STARTED = "not started"  # the reason of a trial asked ahead (search/ask_ahead.py) that never ran starts with this


def not_started(trial: FrozenTrial) -> bool:
    """A trial asked ahead that never ran: the sweep stopped before its turn (FAIL, given back to the budget)."""
    return trial.state == TrialState.FAIL and str(trial.user_attrs.get("reason", "")).startswith(NOT_STARTED)


def refused_before_training(trial: FrozenTrial) -> bool:
    """A trial pruned before its first epoch because its architecture cannot be built or is over budget."""
    return trial.state == TrialState.PRUNED and bool(trial.user_attrs.get("invalid_reason"))


def failure_counts(study: optuna.Study, states: Sequence[TrialState] = (TrialState.FAIL, TrialState.PRUNED)
                   ) -> list[dict[str, Any]]:
    """Trials that did not complete, grouped by state and reason, most common first.

    Returns:
        Rows with state ("FAIL", "PRUNED"), reason (one line) and trials (how many).
    """
    counts = Counter((t.state.name, (trial_reason(t) or "-").strip().splitlines()[-1][:160])
                     for t in study.get_trials(deepcopy=False, states=tuple(states)))
    return [{"state": state, "reason": reason, "trials": n} for (state, reason), n in counts.most_common()]


def failures_table(rows: Sequence[Mapping[str, Any]], title: str = "trials without a result") -> Table:
    """Render `failure_counts` rows: why trials failed or were pruned."""
    table = Table(title=title)
    for name, justify in (("state", "left"), ("trials", "right"), ("reason", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        table.add_row(row["state"], str(row["trials"]), row["reason"])
    return table
