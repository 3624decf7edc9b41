"""The per-step lr schedule: warm-up, then cosine / one-cycle / constant, as the step really sees it."""

from __future__ import annotations

import math

import pytest
import torch

from convsweep.lightning_modules.arch import ArchSpec, BlockSpec, OptimSpec, SpecError
from convsweep.lightning_modules.network import build_convnet
from convsweep.lightning_modules.schedule import lr_table
from convsweep.lightning_modules.train_step import TrainStep


def expected_lr(step: int, peak: float, total: int, warm: int, schedule: str) -> float:
    """Written out independently of schedule.py: linear warm-up to `peak`, then the decay."""
    if step < warm:
        return peak * (step + 1) / warm
    progress = (step - warm) / (total - warm)
    decay = {"cosine": (1 + math.cos(math.pi * progress)) / 2, "onecycle": 1 - progress, "constant": 1.0}
    return peak * decay[schedule]


@pytest.mark.parametrize("schedule", ["cosine", "onecycle", "constant"])
def test_warmup_then_decay_matches_the_formula(schedule: str) -> None:
    table = lr_table(OptimSpec(lr=0.1, warmup=0.1, schedule=schedule), total_steps=200)
    assert table.shape == (200,)
    for step in (0, 5, 19, 20, 21, 100, 150, 199):
        assert float(table[step]) == pytest.approx(expected_lr(step, 0.1, 200, 20, schedule), rel=1e-6)
    assert float(table.max()) == pytest.approx(0.1)
    assert float(table[0]) == pytest.approx(0.005)  # the first step is not wasted at lr 0


def test_no_warmup_starts_at_the_peak() -> None:
    table = lr_table(OptimSpec(lr=0.01, warmup=0.0), total_steps=10)
    assert float(table[0]) == pytest.approx(0.01) and float(table[-1]) < 0.001


def test_the_optimizer_steps_at_the_scheduled_lr() -> None:
    """Read the lr the optimizer actually used at each step (the tensor the step rewrites)."""
    torch.manual_seed(0)
    net = build_convnet(ArchSpec(blocks=(BlockSpec(4),)), (1, 8, 8), 3)
    optim = OptimSpec(optimizer="sgd", lr=0.2, warmup=0.25, schedule="cosine")
    step = TrainStep(net, optim, total_steps=12, device=torch.device("cpu"), amp_dtype=None)
    x, y = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8), torch.randint(0, 3, (6,))
    seen = []
    for _ in range(12):
        step.update(x, y)
        seen.append(float(step.optimizer.param_groups[0]["lr"]))
    assert seen == pytest.approx([expected_lr(s, 0.2, 12, 3, "cosine") for s in range(12)], rel=1e-6)


@pytest.mark.parametrize("field, value", [("schedule", "linear"), ("warmup", 1.0), ("label_smoothing", -0.1),
                                          ("augment_strength", -1.0)])
def test_bad_recipe_values_are_refused(field: str, value: object) -> None:
    with pytest.raises(SpecError, match=field):
        OptimSpec(**{field: value})
