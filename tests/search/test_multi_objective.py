"""Multi-objective sweeps end to end: a Pareto set in Optuna, `convsweep best` and MLflow; budgets as constraints."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf
from rich.console import Console

from convsweep.dashboards.leaderboard import trial_model_uri
from convsweep.errors import ConvsweepError
from convsweep.search import run_records as rr
from convsweep.search.cli import main
from convsweep.search.preflight import prepare_sweep
from convsweep.search.storage import resolve_locations
from convsweep.search.studies import ensure_study_exists
from convsweep.search.sweep import run_sweep

TS = optuna.trial.TrialState
OBJECTIVES = "search.objectives=[val/acc:maximize,model/params:minimize]"
# One block whose width alone varies: wider nets cost more params and, within a few epochs, learn more,
# so the grid's four trials trade accuracy against size.
WIDTH_ONLY_SPACE = {"depth": 1, "widths": {"mode": "independent", "filters": {"type": "categorical", "choices": [2, 4, 8, 32]}},
                    "optim": {"optimizer": "adamw", "lr": 0.01, "weight_decay": 0.0, "batch_size": 64}}


@pytest.mark.slow
def test_a_multi_objective_sweep_leaves_a_pareto_set_in_best_and_mlflow(tiny_cfg, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tiny_cfg(OBJECTIVES, "sampler=grid", "search.n_trials=4", "trainer.max_epochs=3", study="mo")
    cfg.search_space = OmegaConf.create(WIDTH_ONLY_SPACE)
    summary = run_sweep(prepare_sweep(cfg), Console(quiet=True))
    loc = resolve_locations(cfg.tracking)
    study = ensure_study_exists(loc, "mo")

    assert study.metric_names == ["val/acc", "model/params"]
    assert [t.state for t in study.trials] == [TS.COMPLETE] * 4
    assert all(not t.intermediate_values for t in study.trials)  # no reports: Optuna cannot prune these trials
    front = study.best_trials
    assert len(front) >= 3, [t.values for t in study.trials]

    smallest = min(front, key=lambda t: t.values[1])
    out = tmp_path / "best.yaml"
    assert main(["best", "--study", "mo", f"tracking.run_dir={loc.run_dir}", "-o", str(out),
                 "--pick", "best:model/params"]) == 0
    printed = capsys.readouterr().out
    assert f"Pareto set of mo: {len(front)} trials" in printed
    assert f"{smallest.number} *" in printed  # the picked one is marked
    header = out.read_text().splitlines()[0]
    assert header.startswith(f"# Best trial {smallest.number} of study 'mo' (picked from the Pareto front by best:model/params)")
    assert OmegaConf.load(out).arch.blocks[0].filters == smallest.params["block1.filters"]

    client = MlflowClient(loc.mlflow_uri)
    plots = {a.path for a in client.list_artifacts(summary.parent_run_id, "plots")}
    assert {"plots/pareto_front.png", "plots/report.html"} <= plots  # report.html: every view, interactive
    for t in study.trials:
        run = client.get_run(t.user_attrs["mlflow_run_id"])
        assert run.data.metrics["model/params"] == t.values[1]
        assert run.data.metrics["val/acc_best"] == pytest.approx(t.values[0])
        assert run.data.tags[rr.STATE] == "COMPLETE"
    assert all(trial_model_uri(client, t) for t in front)  # every front trial can be registered

    single = tiny_cfg("sampler=grid", study="mo")  # the same study with one objective: refused, nothing runs
    single.search_space = OmegaConf.create(WIDTH_ONLY_SPACE)
    with pytest.raises(ConvsweepError, match=r"study 'mo' optimises \['val/acc', 'model/params'\], not \['val/acc'\]"):
        run_sweep(prepare_sweep(single), Console(quiet=True))
    assert len(ensure_study_exists(loc, "mo").trials) == 4


@pytest.mark.slow
def test_a_params_budget_is_a_constraint_and_over_budget_nets_never_train(tiny_cfg) -> None:
    cfg = tiny_cfg("search.max_params=10", "search.n_trials=2", "search.max_refused=0")
    run_sweep(prepare_sweep(cfg), Console(quiet=True))
    study = ensure_study_exists(resolve_locations(cfg.tracking), "tiny")
    assert [t.state for t in study.trials] == [TS.PRUNED] * 2  # max_refused=0: every refusal counts
    for t in study.trials:
        assert "params exceeds the budget search.max_params=10" in t.user_attrs["invalid_reason"]
        assert t.constraints["max_params"] > 0  # what TPE, NSGA-II and GP learn the budget from
        assert not t.intermediate_values  # no epoch was trained


@pytest.mark.slow
def test_nsga2_trades_accuracy_size_and_measured_latency_inside_a_params_budget(tiny_cfg) -> None:
    cfg = tiny_cfg("search.objectives=[val/acc,model/params,model/latency_ms]", "sampler=nsga2", "search.max_params=20000",
                   "search.n_trials=3", "trainer.max_epochs=1", study="nsga2")
    summary = run_sweep(prepare_sweep(cfg), Console(quiet=True))
    loc = resolve_locations(cfg.tracking)
    study = ensure_study_exists(loc, "nsga2")
    assert study.metric_names == ["val/acc", "model/params", "model/latency_ms"]
    assert len(study.trials) == 3 and all(t.state in (TS.COMPLETE, TS.PRUNED) for t in study.trials)
    assert any(t.state == TS.COMPLETE for t in study.trials)
    client = MlflowClient(loc.mlflow_uri)
    assert "plots/pareto_front.png" in {a.path for a in client.list_artifacts(summary.parent_run_id, "plots")}  # 3-D
    for t in study.trials:
        params = t.user_attrs.get("params_count")
        if t.state == TS.COMPLETE:  # trained: inside the budget, and its constraint says so
            assert t.values[1] == params <= 20000 and t.constraints["max_params"] <= 0
            assert 0 < t.values[2] == client.get_run(t.user_attrs["mlflow_run_id"]).data.metrics["model/latency_ms"]
