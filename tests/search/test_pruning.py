"""Pruning never throws away a finished trial: the last epoch is reported but not pruned."""

from __future__ import annotations

import optuna
import pytest
from rich.console import Console

from convsweep.search.preflight import prepare_sweep
from convsweep.search.storage import resolve_locations
from convsweep.search.studies import ensure_study_exists
from convsweep.search.sweep import run_sweep


@pytest.mark.slow
def test_a_pruner_that_would_prune_every_epoch_lets_the_last_one_complete(tiny_cfg) -> None:
    # lower=1.5: no accuracy passes, so every epoch but the last is pruned (test_sweep: epoch 0 of 2)
    cfg = tiny_cfg("pruner=threshold", "pruner.lower=1.5", "pruner.n_warmup_steps=0", "search.n_trials=2",
                   "trainer.max_epochs=1")
    run_sweep(prepare_sweep(cfg), Console(quiet=True))
    study = ensure_study_exists(resolve_locations(cfg.tracking), "tiny")
    trained = [t for t in study.trials if not t.user_attrs.get("invalid_reason")]
    assert trained and all(t.state == optuna.trial.TrialState.COMPLETE for t in trained)
    assert all(list(t.intermediate_values) == [0] and t.value == t.intermediate_values[0] for t in trained)
