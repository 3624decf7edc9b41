"""A sweep whose learning rates make the loss diverge: the trials end PRUNED with the reason, and
`convsweep train` of such a config fails in one line."""

from __future__ import annotations

import optuna
import pytest
from mlflow.tracking import MlflowClient
from rich.console import Console

from convsweep.search import run_records as rr
from convsweep.search.cli import main
from convsweep.search.preflight import prepare_sweep
from convsweep.search.storage import resolve_locations
from convsweep.search.studies import ensure_study_exists
from convsweep.search.sweep import run_sweep

# batch norm off: with it the shipped space keeps the loss finite (if huge) even at these rates
DIVERGING = ("search_space.optim.optimizer=sgd", "search_space.optim.lr={type:float,low:1000.0,high:10000.0,log:true}",
             "search_space.block.batch_norm=false")


@pytest.mark.slow
def test_diverging_trials_end_pruned_with_the_reason_and_never_a_nan_value(tiny_cfg, capsys) -> None:
    cfg = tiny_cfg(*DIVERGING, "search.metric=val/loss", "search.direction=minimize", "search.n_trials=2",
                   "pruner=none")
    run_sweep(prepare_sweep(cfg), Console(quiet=True))
    loc = resolve_locations(cfg.tracking)
    study = ensure_study_exists(loc, "tiny")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * 2
    for trial in study.trials:
        assert trial.user_attrs["reason"].startswith("diverged: loss is ")
        assert " at epoch 0 " in trial.user_attrs["reason"]
        assert trial.value is None and not trial.intermediate_values  # no NaN reached Optuna
        run = MlflowClient(loc.mlflow_uri).get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags[rr.REASON] == trial.user_attrs["reason"] and run.info.status == "KILLED"
        assert "val/loss_best" not in run.data.metrics  # a NaN is not the best of anything
    # read-only commands take the metric from the study (set_metric_names), not from their own config
    capsys.readouterr()
    assert main(["report", "--study", "tiny", f"tracking.run_dir={loc.run_dir}"]) == 0
    out = capsys.readouterr().out
    assert "val/loss" in out and "val/acc" not in out
    assert "diverged: loss is" in out  # the failures table names why


@pytest.mark.slow
def test_training_a_diverging_config_is_a_one_line_error(tiny_cfg, capsys) -> None:
    cfg = tiny_cfg()
    args = ["train", "dataset=digits", f"tracking.run_dir={resolve_locations(cfg.tracking).run_dir}",
            "optim.optimizer=sgd", "optim.lr=10000.0", "trainer.max_epochs=2"]
    assert main(args) == 2
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if line.startswith("convsweep")]  # MLflow logs creating its store
    assert "Traceback" not in err
    assert line.startswith("convsweep train: error: diverged: loss is nan at epoch 0") and "optim.lr" in line
