"""Divergence: a NaN or infinite loss stops the fit at the end of that epoch, and never becomes the best epoch."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from convsweep.lightning_modules.arch import ArchSpec, BlockSpec, OptimSpec
from convsweep.lightning_modules.data import load_dataset
from convsweep.lightning_modules.runner import DivergedError, EpochHistory, train_model


def test_a_diverging_fit_stops_at_the_first_epoch_and_keeps_no_best() -> None:
    data = load_dataset({"name": "digits", "root": None, "val_fraction": 0.15, "test_fraction": 0.15, "seed": 0,
                         "augment": {"crop_padding": 1, "hflip": False}})
    history = EpochHistory("val/loss", "minimize")
    with pytest.raises(DivergedError, match=r"^diverged: loss is nan at epoch 0 \((train|val)/loss\)$"):
        train_model(data, ArchSpec(blocks=(BlockSpec(8),)), OptimSpec(optimizer="sgd", lr=1.0e4, batch_size=128),
                    {"accelerator": "cpu", "max_epochs": 3, "cuda_graphs": False}, seed=0,
                    metric="val/loss", direction="minimize", history=history)
    assert len(history.epochs) == 1  # stopped where it diverged, not after max_epochs
    assert math.isnan(history.epochs[0]["val/loss"])  # the metric's first epoch is NaN, and it is not the best
    assert history.best_epoch == -1 and history.best_value is None and history.best_state is None


def end_epoch(history: EpochHistory, epoch: int, **metrics: float) -> None:
    """What Lightning does at the end of a validation epoch, with these logged metrics."""
    trainer = SimpleNamespace(sanity_checking=False, current_epoch=epoch,
                              callback_metrics={k.replace("_", "/"): torch.tensor(v) for k, v in metrics.items()})
    history.on_validation_end(trainer, SimpleNamespace(net=torch.nn.Linear(2, 2)))


def test_a_non_finite_metric_is_recorded_but_never_the_best_epoch() -> None:
    history = EpochHistory("val/acc", "maximize")
    end_epoch(history, 0, val_acc=math.nan)
    end_epoch(history, 1, val_acc=0.2)
    end_epoch(history, 2, val_acc=math.inf)
    assert [math.isnan(r["val/acc"]) for r in history.epochs] == [True, False, False]
    assert history.best_epoch == 1 and history.best_value == pytest.approx(0.2)
