"""search.objectives parsed in order (bad ones: test_sweep.py); the hard budgets recorded as Optuna constraints."""

from __future__ import annotations

import optuna
import pytest
from omegaconf import OmegaConf

from convsweep.lightning_modules.arch import ArchSpec, BlockSpec
from convsweep.lightning_modules.network import plan_convnet
from convsweep.search.objective import record_budgets
from convsweep.search.preflight import Objective, sweep_objectives


@pytest.mark.parametrize(("objectives", "expected"), [
    ("[]", [("val/acc", "maximize")]),
    ("[val/acc:maximize,model/params:minimize]", [("val/acc", "maximize"), ("model/params", "minimize")]),
    ("[val/acc,model/macs,model/latency_ms]",  # a direction left out is the natural one
     [("val/acc", "maximize"), ("model/macs", "minimize"), ("model/latency_ms", "minimize")]),
])
def test_objectives_parse_in_order(tiny_cfg, objectives: str, expected: list[tuple[str, str]]) -> None:
    assert sweep_objectives(tiny_cfg(f"search.objectives={objectives}")) == [Objective(*o) for o in expected]


def test_budgets_become_constraints_feasible_below_infeasible_above() -> None:
    net_plan = plan_convnet(ArchSpec(blocks=(BlockSpec(8),)), (1, 8, 8), 10)
    study = optuna.create_study()
    search = OmegaConf.create({"max_params": net_plan.params * 2, "max_macs": net_plan.macs / 2})

    trial = study.ask()
    reason = record_budgets(trial, net_plan, search)
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)

    constraints = study.trials[0].constraints
    assert constraints["max_params"] == pytest.approx(-0.5)  # half the budget: feasible
    assert constraints["max_macs"] == pytest.approx(1.0)  # twice the budget: infeasible
    assert reason == f"{net_plan.macs / 1e6:.1f}M MACs per image exceeds the budget search.max_macs={net_plan.macs / 2e6:g}M"


def test_no_budget_records_no_constraint() -> None:
    net_plan = plan_convnet(ArchSpec(blocks=(BlockSpec(8),)), (1, 8, 8), 10)
    study = optuna.create_study()
    trial = study.ask()
    assert record_budgets(trial, net_plan, OmegaConf.create({"max_params": None, "max_macs": None})) is None
    study.tell(trial, 0.5)
    assert study.trials[0].constraints == {}
