"""The LightningModule every trial trains: Lightning drives the fit, `StepRunner` takes the steps.

Optimization is manual: each Lightning batch is a chunk of several optimizer steps
(`StepChunks`), each run by the `StepRunner`, eagerly or by replaying a captured CUDA graph.
Lightning's hooks then cost once per chunk, not once per step. Metrics are accumulated on the
device and logged once per epoch, so a step never waits for the host: `train/loss`,
`train/acc`, `val/loss` and `val/acc` (the default search metric).
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule
from torch import nn
from torch.nn import functional as F

from convsweep.lightning_modules.cuda_graphs import StepInput, StepRunner

from convsweep.lightning_modules.metrics import METRICS  # noqa: F401 - every name a trial logs per epoch


class ConvNetModule(LightningModule):
    """Trains `net` by `runner`'s steps; validates in the step's precision and memory format."""

    def __init__(self, net: nn.Module, runner: StepRunner) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.net, self.runner = net, runner
        self._val_sums: torch.Tensor | None = None  # (loss x samples, correct), summed on the device
        self._val_count = 0  # samples; kept on the host, where it is known for free

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner.step.forward(x)

    def training_step(self, chunk: list[StepInput], batch_idx: int) -> None:
        for item in chunk:
            self.runner.run(item)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch  # uint8 (B, C, H, W), int64 (B,)
        logits = self(x).float()
        # No tensor made from a host number: on CUDA that would be a blocking copy every batch.
        sums = torch.stack([F.cross_entropy(logits, y) * y.numel(), (logits.argmax(1) == y).sum().float()])
        self._val_sums = sums if self._val_sums is None else self._val_sums + sums
        self._val_count += y.numel()

    def on_validation_epoch_end(self) -> None:
        # Validation runs before on_train_epoch_end, so the epoch's train metrics are logged here too.
        (loss_sum, correct), n = self._val_sums, self._val_count  # type: ignore[misc]
        metrics = {"val/loss": loss_sum / n, "val/acc": correct / n}
        self._val_sums, self._val_count = None, 0
        (train_loss, train_correct), samples = self.runner.take_epoch()
        if samples:
            metrics.update({"train/loss": train_loss / samples, "train/acc": train_correct / samples})
        self.log_dict(metrics, on_epoch=True, prog_bar=False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.runner.step.optimizer
