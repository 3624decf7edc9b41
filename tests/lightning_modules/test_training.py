"""`train_model` on CPU: the chunked manual-optimization loop, the graph path's control flow
(with an eager stand-in for the capture) and its fall-back, step budgets and the best weights."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

import pytest
import torch
from lightning.pytorch import seed_everything
from torch.nn import functional as F

from convsweep.lightning_modules import cuda_graphs
from convsweep.lightning_modules.arch import ArchSpec, BlockSpec, OptimSpec
from convsweep.lightning_modules.data import ImageData, Split, load_dataset, make_batches
from convsweep.lightning_modules.data.batches import DeviceBatches
from convsweep.lightning_modules.network import build_convnet
from convsweep.lightning_modules.runner import evaluate_model, train_model
from convsweep.lightning_modules.schedule import lr_table
from tests.lightning_modules.test_batches import PairsDataset

ARCH = ArchSpec(blocks=(BlockSpec(8), BlockSpec(16)))
SGD = OptimSpec(optimizer="sgd", lr=0.2, batch_size=128)  # digits: 1,257 train images = 9 full batches + 105


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny nets gain nothing from a second thread, and on a shared 2-core machine it makes them several times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> ImageData:
    return load_dataset({"name": "digits", "root": None, "val_fraction": 0.15, "test_fraction": 0.15, "seed": 0,
                         "augment": {"crop_padding": 1, "hflip": False}})


def train(data: ImageData, optim: OptimSpec = SGD, **trainer: Any) -> Any:
    cfg = {"accelerator": "cpu", "max_epochs": 3, "cuda_graphs": False, **trainer}
    return train_model(data, ARCH, optim, cfg, seed=0)


def metrics(result: Any) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items()} for row in result.history]


def reference_loop(data: ImageData, optim: OptimSpec, epochs: int, seed: int = 0) -> list[dict[str, float]]:
    """What automatic optimization does, written out: one batch, one step, lr from the schedule table."""
    seed_everything(seed, workers=False, verbose=False)
    net = build_convnet(ARCH, data.input_shape, data.num_classes, data.mean, data.std)
    batches = DeviceBatches(data.train, optim.batch_size, "cpu", shuffle=True, augment=data.augment, seed=seed)
    table = lr_table(optim, epochs * len(batches))
    opt = torch.optim.SGD(net.parameters(), lr=float(table[0]), momentum=optim.momentum,
                          weight_decay=optim.weight_decay, nesterov=True)
    rows, step = [], 0
    for epoch in range(epochs):
        net.train()
        sums = torch.zeros(2)
        for x, y in batches:
            opt.param_groups[0]["lr"] = float(table[step])
            step += 1
            logits = net(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += torch.stack([loss.detach() * len(y), (logits.argmax(1) == y).sum().float()])
        net.eval()
        val = torch.zeros(2)
        with torch.no_grad():
            for x, y in make_batches(data.val, 256, "cpu", train=False):
                logits = net(x)
                val += torch.stack([F.cross_entropy(logits, y) * len(y), (logits.argmax(1) == y).sum().float()])
        n_train, n_val = len(data.train), len(data.val)
        rows.append({"val/loss": float(val[0] / n_val), "val/acc": float(val[1] / n_val),
                     "train/loss": float(sums[0] / n_train), "train/acc": float(sums[1] / n_train), "epoch": epoch})
    return rows


def test_the_chunked_manual_loop_matches_a_plain_step_per_batch_loop(digits: ImageData) -> None:
    result = train(digits, chunk_steps=4)
    expected = reference_loop(digits, SGD, epochs=3)
    assert [set(r) for r in metrics(result)] == [set(r) for r in expected]
    for got, want in zip(metrics(result), expected):
        assert got == pytest.approx(want, rel=1e-6, abs=1e-7)
    assert result.steps == 3 * 10 and result.history[-1]["val/acc"] > 0.5


def test_chunk_size_changes_nothing_but_the_hook_count(digits: ImageData) -> None:
    one, eight = train(digits, chunk_steps=1, max_epochs=2), train(digits, chunk_steps=8, max_epochs=2)
    assert metrics(one) == metrics(eight)


class FakeCapture:
    """Stands in for `capture_graph` on CPU: 'captures' by keeping the function and replays it.

    The function reads the runner's static plan buffer, so replays train on the right batches
    only if the runner refills that buffer before each one, as it must for a real graph.
    """

    def __init__(self, error: Exception | None = None) -> None:
        self.error, self.calls = error, 0

    def __call__(self, fn: Callable[[], None], device: torch.device) -> Callable[[], None]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return fn


def test_graph_path_replays_from_static_buffers_with_the_eager_results(digits: ImageData, monkeypatch) -> None:
    capture = FakeCapture()
    monkeypatch.setattr(cuda_graphs, "capture_graph", capture)
    graphed = train(digits, cuda_graphs=True)
    assert capture.calls == 1 and graphed.cuda_graphs and graphed.fallback_reason is None
    assert metrics(graphed) == metrics(train(digits))  # the ragged last batch of each epoch ran eagerly


def test_a_failed_capture_falls_back_to_eager_and_records_why(digits: ImageData, monkeypatch) -> None:
    capture = FakeCapture(RuntimeError("injected: operation not permitted when stream is capturing"))
    monkeypatch.setattr(cuda_graphs, "capture_graph", capture)
    result = train(digits, cuda_graphs=True)
    assert capture.calls == 1 and not result.cuda_graphs
    assert result.fallback_reason == "RuntimeError: injected: operation not permitted when stream is capturing"
    assert metrics(result) == metrics(train(digits))  # no step lost: the trial went on eagerly


def test_cuda_graphs_true_on_cpu_falls_back_with_the_reason(digits: ImageData) -> None:
    result = train(digits, cuda_graphs=True, max_epochs=1)
    assert not result.cuda_graphs and "need a CUDA device" in result.fallback_reason
    assert train(digits, max_epochs=1, cuda_graphs="auto").fallback_reason is None  # auto: off on CPU, not a fall-back


def test_max_steps_replaces_epochs_and_cuts_the_last_one_short(digits: ImageData) -> None:
    result = train(digits, max_steps=25, max_epochs=1)
    assert result.steps == 25 and [r["epoch"] for r in result.history] == [0, 1, 2]
    limited = train(digits, limit_train_batches=4, max_epochs=2)
    assert limited.steps == 8 and len(limited.history) == 2


def test_the_model_returned_has_the_best_epochs_weights(digits: ImageData) -> None:
    result = train(digits, max_epochs=4)
    scored = evaluate_model(result.model, digits.val, digits.num_classes)
    assert result.best_value == max(r["val/acc"] for r in result.history)
    assert scored["acc"] == pytest.approx(result.best_value, abs=1.5 / len(digits.val))
    assert next(result.model.parameters()).device.type == "cpu"


def test_a_streamed_split_trains_eagerly_and_says_why_not_graphed(digits: ImageData) -> None:
    data = dataclasses.replace(digits, loader_workers=0)
    result = train_model(data, ARCH, SGD, {"accelerator": "cpu", "max_epochs": 1, "cuda_graphs": True}, seed=0,
                         train_split=Split(dataset=PairsDataset(digits.train)))
    assert result.steps == 10 and len(result.history) == 1
    assert not result.cuda_graphs and "streams from disk" in result.fallback_reason
