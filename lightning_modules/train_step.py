"""One training step, written so that the same code runs eagerly or captured in a CUDA graph.

A step gathers and augments its batch from the device-resident split (by a plan slice: int64
(4, B) of sample indices and augmentation draws), runs the forward pass under autocast, the
loss, the backward pass, the optimizer step and adds its loss and correct count to on-device
sums. Everything it reads or writes between steps lives in tensors that keep their address
(the lr, the step counter, the metric sums, the optimizer state), and it never syncs with the
host, so a graph captured from one call replays every later step.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from convsweep.errors import ConvsweepError
from convsweep.lightning_modules.arch import OptimSpec
from convsweep.lightning_modules.data.batches import gather_batch
from convsweep.lightning_modules.schedule import lr_table

PRECISIONS = {"bf16-mixed": torch.bfloat16, "bf16": torch.bfloat16, "32-true": None, "32": None}


class PrecisionError(ConvsweepError, ValueError):
    """`trainer.precision` names a precision the training step does not run."""


def autocast_dtype(precision: object, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `trainer.precision` (auto = bf16 on CUDA, none on CPU); None = fp32."""
    if precision in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else None
    key = str(precision)
    if key not in PRECISIONS:
        raise PrecisionError(f"trainer.precision={precision!r} is not supported: use auto, bf16-mixed or 32-true "
                             "(fp16 would need a loss scaler, which a captured step does not run)")
    return PRECISIONS[key]


def make_optimizer(params: Iterator[nn.Parameter], optim: OptimSpec, lr: torch.Tensor) -> torch.optim.Optimizer:
    """The trial's optimizer, reading its lr from the device tensor `lr` (0-dim, float32).

    On CUDA it uses the fused kernels, with `capturable=True` for Adam/AdamW so that their
    step counters stay on the device; fused SGD keeps no counter and takes a tensor lr as is.
    """
    fused = lr.device.type == "cuda" or None  # None: torch's own choice (single-tensor on CPU)
    if optim.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=optim.momentum, weight_decay=optim.weight_decay,
                               nesterov=optim.momentum > 0, fused=fused)
    cls = torch.optim.AdamW if optim.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, weight_decay=optim.weight_decay, fused=fused, capturable=bool(fused))


class TrainStep:
    """The step function and the state it keeps on the device between steps.

    Args:
        net: the network, already on `device` (and in channels_last when asked).
        optim: the optimisation spec (optimizer, lr, schedule, label smoothing).
        total_steps: optimizer steps the trial will take; sizes the lr table.
        device: where everything runs.
        amp_dtype: autocast dtype (bf16) or None for fp32.
        channels_last: convert each input batch to channels_last.
        grad_clip: clip the gradients' global norm to this (None = off).
        images, labels: the device-resident split (uint8 (N, C, H, W), int64 (N,)) that plan
            slices index; None when batches come from a DataLoader.
        padding, flips: the crop padding and whether plans carry flips (see `scaled_augment`).
    """

    def __init__(self, net: nn.Module, optim: OptimSpec, total_steps: int, device: torch.device, *,
                 amp_dtype: torch.dtype | None, channels_last: bool = False, grad_clip: float | None = None,
                 images: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                 padding: int = 0, flips: bool = False) -> None:
        self.net, self.device, self.amp_dtype, self.channels_last = net, device, amp_dtype, channels_last
        self.label_smoothing, self.grad_clip = float(optim.label_smoothing), grad_clip
        self.images, self.labels, self.padding, self.flips = images, labels, padding, flips
        self.lr_table = lr_table(optim, total_steps).to(device)  # (T,) lr per optimizer step
        self.lr = self.lr_table[0].clone()  # () the optimizer's lr, rewritten in place every step
        self.step_index = torch.zeros(1, dtype=torch.long, device=device)  # (1,) optimizer steps taken
        self.sums = torch.zeros(2, device=device)  # (loss x samples, correct) since the last `take_sums`
        self.optimizer = make_optimizer(net.parameters(), optim, self.lr)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast (or nothing); the cache is off because a captured graph cannot reuse it."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype, cache_enabled=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, K) of uint8 images (B, C, H, W), under the step's precision and memory format."""
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.autocast():
            return self.net(x)

    def on_plan(self, plan: torch.Tensor) -> None:
        """One step on the batch a plan slice (int64 (4, B)) names in the resident split."""
        x, y = gather_batch(self.images, self.labels, plan, self.padding, self.flips)  # type: ignore[arg-type]
        self.update(x, y)

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """One optimizer step on images (B, C, H, W) and labels (B,): no host sync, no new state."""
        last = self.lr_table.numel() - 1
        self.lr.copy_(self.lr_table.index_select(0, self.step_index.clamp(max=last)).view(()))
        self.optimizer.zero_grad(set_to_none=True)  # a capture then records fresh gradient buffers
        logits = self.forward(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        loss.backward()
        if self.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.grad_clip, foreach=True)
        self.optimizer.step()
        self.step_index.add_(1)
        self.sums.add_(torch.stack([loss.detach() * y.numel(), (logits.argmax(1) == y).sum().float()]))

    def take_sums(self) -> torch.Tensor:
        """(loss x samples, correct) summed since the last call, then zeroed in place (the graph writes there)."""
        out = self.sums.clone()
        self.sums.zero_()
        return out
