"""The leaderboard: best completed trials first by the study's direction, with what identifies them."""

from __future__ import annotations

from typing import Callable

import optuna
from optuna.trial import TrialState
from rich.console import Console

from convsweep.dashboards.leaderboard import leaderboard, leaderboard_table, state_counts


def _render(table: object) -> str:
    console = Console(record=True, width=160)
    console.print(table)
    return console.export_text()


def test_rows_are_the_best_completed_trials_best_first(sweep_study: optuna.Study) -> None:
    complete = [t for t in sweep_study.trials if t.state == TrialState.COMPLETE]

    rows = leaderboard(sweep_study, "val/acc", k=3)

    assert [r["value"] for r in rows] == sorted((t.value for t in complete), reverse=True)[:3]
    assert [r["rank"] for r in rows] == [1, 2, 3]
    best = sweep_study.best_trial
    assert rows[0]["number"] == best.number
    depth = best.params["depth"]
    assert rows[0]["depth"] == depth
    assert rows[0]["filters"] == "-".join(str(best.params[f"block{i}.filters"]) for i in range(1, depth + 1))
    assert rows[0]["params_count"] == best.user_attrs["params_count"]
    assert rows[0]["duration_s"] == best.user_attrs["duration_s"]
    assert rows[0]["mlflow_run_id"] == f"run-{best.number:03d}"


def test_a_minimised_metric_ranks_lowest_first(make_study: Callable[..., optuna.Study]) -> None:
    study = make_study(direction="minimize")

    values = [r["value"] for r in leaderboard(study, "val/loss")]

    assert values == sorted(values) and values[0] == study.best_value


def test_filters_come_from_the_filters_attr_when_widths_are_not_per_block_params() -> None:
    study = optuna.create_study()
    study.add_trial(optuna.trial.create_trial(params={}, distributions={}, value=0.3,
                                              user_attrs={"filters": [16, 32, 64]}))

    (row,) = leaderboard(study, "val/loss")

    assert (row["depth"], row["filters"], row["params_count"], row["mlflow_run_id"]) == (3, "16-32-64", None, None)


def test_table_shows_metric_trials_and_state_counts(sweep_study: optuna.Study) -> None:
    rows = leaderboard(sweep_study, "val/acc", k=5)
    counts = state_counts(sweep_study)

    text = _render(leaderboard_table(rows, "val/acc", "sweep demo", counts))

    assert counts == {"COMPLETE": sum(t.state == TrialState.COMPLETE for t in sweep_study.trials),
                      "PRUNED": sum(t.state == TrialState.PRUNED for t in sweep_study.trials)}
    assert "sweep demo" in text and "val/acc" in text
    assert f"{counts['PRUNED']} pruned" in text
    for row in rows:
        assert row["mlflow_run_id"] in text and f"{row['value']:.4f}" in text


def test_an_empty_study_gives_an_empty_board() -> None:
    study = optuna.create_study(direction="maximize")

    assert leaderboard(study, "val/acc") == []
    assert state_counts(study) == {}
    assert "val/acc" in _render(leaderboard_table([], "val/acc", "empty"))
