"""The LightningModule every trial trains: a network plus an optimisation spec.

Metrics are accumulated on the device and logged once per epoch, so a training step never
waits for the host: `train/loss`, `val/loss` and `val/acc` (the default search metric).
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule
from torch import nn
from torch.nn import functional as F

from convsweep.lightning_modules.arch import OptimSpec

METRICS = ("val/acc", "val/loss", "train/loss", "train/acc")  # every name a trial logs per epoch


class ConvNetModule(LightningModule):
    """Trains `net` with cross-entropy; the optimizer and cosine schedule come from `optim`."""

    def __init__(self, net: nn.Module, optim: OptimSpec, max_epochs: int, channels_last: bool = False) -> None:
        super().__init__()
        self.net = net.to(memory_format=torch.channels_last) if channels_last else net
        self.optim, self.max_epochs, self.channels_last = optim, max_epochs, channels_last
        self._sums: dict[str, torch.Tensor] = {}  # stage -> (loss x samples, correct), summed on the device
        self._counts: dict[str, int] = {}  # stage -> samples; kept on the host, where it is known for free

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _accumulate(self, stage: str, logits: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> None:
        """Sum loss and correct predictions on the device: no .item(), and no tensor made from a host
        number, which on CUDA is a blocking copy, i.e. a host sync every step."""
        n = y.numel()
        batch = torch.stack([loss.detach().float() * n, (logits.argmax(1) == y).sum().float()])
        self._sums[stage] = self._sums[stage] + batch if stage in self._sums else batch
        self._counts[stage] = self._counts.get(stage, 0) + n

    def _epoch_metrics(self, stage: str) -> dict[str, torch.Tensor]:
        loss_sum, correct = self._sums.pop(stage)
        n = self._counts.pop(stage)
        return {f"{stage}/loss": loss_sum / n, f"{stage}/acc": correct / n}

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch  # uint8 (B, C, H, W), int64 (B,)
        logits = self(x)
        loss = F.cross_entropy(logits, y)
        self._accumulate("train", logits, y, loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        logits = self(x)
        self._accumulate("val", logits, y, F.cross_entropy(logits, y))

    def on_validation_epoch_end(self) -> None:
        # Validation runs before on_train_epoch_end, so the epoch's train metrics are logged here too.
        metrics = self._epoch_metrics("val")
        if "train" in self._sums:
            metrics.update(self._epoch_metrics("train"))
        self.log_dict(metrics, on_epoch=True, prog_bar=False)

    def configure_optimizers(self):  # noqa: ANN201 - Lightning's own return type
        o = self.optim
        if o.optimizer == "sgd":
            opt = torch.optim.SGD(self.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, nesterov=o.momentum > 0)
        else:
            cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
            opt = cls(self.parameters(), lr=o.lr, weight_decay=o.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, self.max_epochs))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
