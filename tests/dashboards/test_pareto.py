"""Pareto ranks on the leaderboard: non-dominated sorting checked against a brute-force definition."""

from __future__ import annotations

import functools
import random

import optuna
import pytest

from convsweep.dashboards.leaderboard import leaderboard, leaderboard_table, pareto_ranks


def brute_force_ranks(values: list[list[float]], maximize: list[bool]) -> list[int]:
    """Rank = 1 + the longest chain of trials that dominate it, straight from the definition."""
    def better_or_equal(a: float, b: float, up: bool) -> bool:
        return a >= b if up else a <= b

    def dominates(i: int, j: int) -> bool:
        pairs = list(zip(values[i], values[j], maximize))
        return all(better_or_equal(a, b, up) for a, b, up in pairs) and any(a != b for a, b, _ in pairs)

    @functools.cache
    def rank(j: int) -> int:
        return 1 + max((rank(i) for i in range(len(values)) if dominates(i, j)), default=0)

    return [rank(j) for j in range(len(values))]


@pytest.mark.parametrize("maximize", [[True, False], [False, False], [True, False, False], [True]])
@pytest.mark.parametrize("seed", range(4))
def test_pareto_ranks_match_the_definition(maximize: list[bool], seed: int) -> None:
    rng = random.Random(seed)
    # a coarse grid, so ties and duplicate points occur
    values = [[float(rng.randint(0, 6)) for _ in maximize] for _ in range(40)]
    ranks = pareto_ranks(values, maximize)
    assert ranks == brute_force_ranks(values, maximize)
    assert max(ranks) > 1  # the check covers dominated points, not only a front


def test_the_board_shows_the_front_first_with_its_rank(multi_objective_study: optuna.Study) -> None:
    rows = leaderboard(multi_objective_study, "val/acc", k=100)
    front = {t.number for t in multi_objective_study.best_trials}  # Optuna's own Pareto front
    assert {r["number"] for r in rows if r["pareto_rank"] == 1} == front
    assert [r["pareto_rank"] for r in rows] == sorted(r["pareto_rank"] for r in rows)
    assert max(r["pareto_rank"] for r in rows) > 1  # the fixture has dominated trials
    first = [r["value"] for r in rows if r["pareto_rank"] == 1]
    assert first == sorted(first, reverse=True)  # by the metric within a rank
    assert all(set(r["objectives"]) == {"params_count"} for r in rows)

    table = leaderboard_table(rows, "val/acc", "board")
    headers = [c.header for c in table.columns]
    assert "Pareto rank" in headers and "params_count" in headers


def test_a_single_objective_board_has_no_pareto_rank(sweep_study: optuna.Study) -> None:
    rows = leaderboard(sweep_study, "val/acc")
    assert all(r["pareto_rank"] is None and r["objectives"] == {} for r in rows)
    assert "Pareto rank" not in [c.header for c in leaderboard_table(rows, "val/acc", "board").columns]
