"""The CUDA fast path: device-resident batches, bf16 autocast, channels_last. Runs only with `-m gpu`."""

from __future__ import annotations

import pytest
import torch

from convsweep.lightning_modules.data import load_dataset, make_batches
from convsweep.lightning_modules.data.batches import DeviceBatches
from convsweep.lightning_modules.runner import make_trainer, train_model
from convsweep.search.compose import compose_config
from convsweep.search.train import specs_from_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_batches_live_on_the_gpu_and_keep_uint8() -> None:
    data = load_dataset(compose_config([]).dataset)
    batches = make_batches(data.train, 256, "cuda", train=True, augment=data.augment, seed=0)
    assert isinstance(batches, DeviceBatches) and batches.images.is_cuda
    x, y = next(iter(batches))
    assert x.is_cuda and y.is_cuda and x.dtype == torch.uint8


def test_a_trial_trains_on_cuda_in_bf16_channels_last_and_reproduces() -> None:
    cfg = compose_config(["trainer.max_epochs=2", "trainer.deterministic=true"])
    data = load_dataset(cfg.dataset)
    arch, optim = specs_from_config(cfg)
    trainer = make_trainer(cfg.trainer, "cuda", [], 10)
    assert trainer.precision == "bf16-mixed"
    first = train_model(data, arch, optim, cfg.trainer, seed=0)
    again = train_model(data, arch, optim, cfg.trainer, seed=0)
    assert first.device == "cuda" and first.best_value > 0.3
    assert [r["val/acc"] for r in again.history] == pytest.approx([r["val/acc"] for r in first.history], abs=1e-6)
