"""`convsweep best --pick RULE` on hand-built studies: which Pareto trial a rule chooses."""

from __future__ import annotations

import warnings

import optuna
import pytest
from optuna.distributions import IntDistribution

from convsweep.errors import ConvsweepError
from convsweep.search.best import best_trials, objective_names, pick_trial

# (val/acc, model/params): trial 4 is dominated by trial 0 (less accurate and larger)
ACC_PARAMS = [(0.990, 50_000), (0.987, 20_000), (0.984, 9_000), (0.950, 3_000), (0.980, 60_000)]


def hand_built(values: list[tuple[float, float]], directions: list[str], names: list[str]) -> optuna.Study:
    """A study holding one finished trial per row, as `create_trial` builds them (nothing trains)."""
    study = optuna.create_study(directions=directions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(names)
    for i, row in enumerate(values):
        study.add_trial(optuna.trial.create_trial(values=list(row), params={"depth": i % 3 + 1},
                                                  distributions={"depth": IntDistribution(1, 3)}))
    return study


@pytest.fixture
def study() -> optuna.Study:
    return hand_built(ACC_PARAMS, ["maximize", "minimize"], ["val/acc", "model/params"])


def pick(study: optuna.Study, rule: str) -> int:
    return pick_trial(best_trials(study), objective_names(study, "val/acc"), study.directions, rule).number


def test_the_front_leaves_out_dominated_trials_best_metric_first(study: optuna.Study) -> None:
    assert [t.number for t in best_trials(study)] == [0, 1, 2, 3]


@pytest.mark.parametrize(("rule", "number"), [
    ("smallest-within:0.005", 1),     # 0.987 is within 0.5% of 0.990 (>= 0.98505); 0.984 is not
    ("smallest-within:0.0065", 2),    # now 0.984 is within (>= 0.98357), and smaller
    ("smallest-within:0", 0),         # only the best accuracy itself
    ("smallest-within:0.05", 3),      # everything on the front
    ("smallest-within:0.005:model/params", 1),
    ("best:val/acc", 0),
    ("best:model/params", 3),
])
def test_rules_pick_the_expected_trial(study: optuna.Study, rule: str, number: int) -> None:
    assert pick(study, rule) == number


def test_a_minimised_metric_counts_its_tolerance_upwards() -> None:
    study = hand_built([(0.100, 9_000), (0.1004, 5_000), (0.102, 1_000)], ["minimize", "minimize"],
                       ["val/loss", "model/params"])
    assert pick(study, "smallest-within:0.005") == 1  # 0.1004 <= 0.1005; 0.102 is 2% worse
    assert pick(study, "best:val/loss") == 0


@pytest.mark.parametrize(("rule", "message"), [
    ("fastest", "unknown --pick rule 'fastest'; use best:NAME or smallest-within:TOL"),
    ("best:model/macs", "'model/macs' is not an objective of this study; its objectives: val/acc, model/params"),
    ("smallest-within:half", "the tolerance must be a number >= 0"),
    ("smallest-within:-0.1", "the tolerance must be a number >= 0"),
])
def test_bad_rules_are_one_line_errors(study: optuna.Study, rule: str, message: str) -> None:
    with pytest.raises(ConvsweepError, match=message.replace("(", r"\(")):
        pick(study, rule)


def test_a_single_objective_study_has_nothing_to_trade() -> None:
    study = optuna.create_study(direction="maximize")
    for value in (0.5, 0.9):
        study.add_trial(optuna.trial.create_trial(value=value))
    assert pick(study, "best:val/acc") == 1
    with pytest.raises(ConvsweepError, match="needs a multi-objective study"):
        pick(study, "smallest-within:0.01")
