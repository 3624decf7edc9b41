"""The step function and its runner on CPU: static buffers, warm-up then one capture, ragged
batches eager, label smoothing, and the precision setting."""

from __future__ import annotations

import copy
from typing import Callable

import pytest
import torch
from torch.nn import functional as F

from convsweep.lightning_modules import cuda_graphs
from convsweep.lightning_modules.arch import ArchSpec, BlockSpec, OptimSpec
from convsweep.lightning_modules.cuda_graphs import StepRunner, resolve_cuda_graphs
from convsweep.lightning_modules.data import Augment, Split
from convsweep.lightning_modules.data.batches import DeviceBatches, StepChunks
from convsweep.lightning_modules.network import build_convnet
from convsweep.lightning_modules.train_step import PrecisionError, TrainStep, autocast_dtype

CPU = torch.device("cpu")


def tiny_split(n: int = 44) -> Split:
    g = torch.Generator().manual_seed(0)
    return Split(torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8), torch.randint(0, 3, (n,), generator=g))


def make_step(split: Split, optim: OptimSpec, total_steps: int = 50) -> TrainStep:
    torch.manual_seed(0)
    net = build_convnet(ArchSpec(blocks=(BlockSpec(4),)), (1, 8, 8), 3)
    return TrainStep(net, optim, total_steps, CPU, amp_dtype=None, images=split.images, labels=split.labels,
                     padding=1, flips=True)


def test_runner_warms_up_captures_once_replays_full_batches_and_runs_ragged_ones_eagerly(monkeypatch) -> None:
    captured: list[Callable[[], None]] = []
    replayed_plans: list[torch.Tensor] = []

    def fake_capture(fn: Callable[[], None], device: torch.device) -> Callable[[], None]:
        captured.append(fn)

        def replay() -> None:
            replayed_plans.append(runner.static_plan.clone())  # what a real graph would read
            fn()
        return replay

    monkeypatch.setattr(cuda_graphs, "capture_graph", fake_capture)
    split = tiny_split()
    batches = DeviceBatches(split, 8, CPU, shuffle=True, augment=Augment(crop_padding=1, hflip=True), seed=0)
    runner = StepRunner(make_step(split, OptimSpec()), 8, graphs=True)
    chunks = StepChunks(batches, chunk=4, steps_per_epoch=len(batches), total_steps=2 * len(batches))
    plans = [plan.clone() for epoch in range(2) for chunk in chunks for plan in chunk]  # 2 x (5 full + 1 of 4)
    for plan in plans:
        runner.run(plan)
    assert len(captured) == 1 and runner.graphed and runner.steps == 12
    full = [p for p in plans if p.shape[1] == 8]
    assert runner.replays == len(full) - 3  # 3 warm-up steps, then every full batch by replay
    assert all(torch.equal(got, want) for got, want in zip(replayed_plans, full[3:]))  # refilled before each replay
    assert int(runner.step.step_index) == 12
    sums, samples = runner.take_epoch()
    assert samples == 2 * len(split) and sums.shape == (2,) and float(runner.step.sums.abs().sum()) == 0


def test_no_graphs_means_every_step_is_eager(monkeypatch) -> None:
    monkeypatch.setattr(cuda_graphs, "capture_graph", lambda fn, device: pytest.fail("must not capture"))
    split = tiny_split()
    runner = StepRunner(make_step(split, OptimSpec()), 8, graphs=False)
    for plan in DeviceBatches(split, 8, CPU, shuffle=True).plans():
        runner.run(plan)
    assert runner.replays == 0 and runner.unused_reason() is None


def test_label_smoothing_is_in_the_loss_and_the_update() -> None:
    split = tiny_split()
    plan = torch.tensor([list(range(8)), [1] * 8, [1] * 8, [0] * 8])  # first 8 samples; crop at the padding = identity
    x, y = split.images[:8], split.labels[:8]
    plain, smooth = make_step(split, OptimSpec(label_smoothing=0.0)), make_step(split, OptimSpec(label_smoothing=0.3))
    reference = copy.deepcopy(smooth.net)
    expected = F.cross_entropy(reference(x), y, label_smoothing=0.3).detach()
    smooth.on_plan(plan)
    plain.on_plan(plan)
    assert float(smooth.take_sums()[0]) / 8 == pytest.approx(float(expected), rel=1e-5)
    weights = [(a - b).abs().max() for a, b in zip(plain.net.parameters(), smooth.net.parameters())]
    assert max(weights) > 0  # the smoothed targets changed the gradient


def test_resolve_cuda_graphs_auto_means_cuda_only() -> None:
    assert resolve_cuda_graphs("auto", torch.device("cuda")) and not resolve_cuda_graphs("auto", CPU)
    assert resolve_cuda_graphs(True, CPU) and not resolve_cuda_graphs(False, torch.device("cuda"))
    assert resolve_cuda_graphs("true", CPU) and not resolve_cuda_graphs("false", CPU)


def test_precision_auto_is_bf16_on_cuda_and_fp32_on_cpu() -> None:
    assert autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16 and autocast_dtype("auto", CPU) is None
    assert autocast_dtype("32-true", torch.device("cuda")) is None and autocast_dtype("bf16-mixed", CPU) is torch.bfloat16
    with pytest.raises(PrecisionError, match="16-mixed"):
        autocast_dtype("16-mixed", CPU)
