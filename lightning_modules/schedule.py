"""The per-step learning-rate schedule: linear warm-up, then cosine, one-cycle or constant.

The whole schedule is computed once per trial as a table with one lr per optimizer step. The
training step reads its lr from that table on the device (indexed by a device step counter),
so the schedule also runs inside a replayed CUDA graph, with no host work per step.
"""

from __future__ import annotations

import math

import torch

from convsweep.lightning_modules.arch import OptimSpec


def warmup_steps(total_steps: int, fraction: float) -> int:
    """Optimizer steps of linear warm-up: `fraction` of the trial's steps, rounded (0 = none)."""
    return int(round(total_steps * float(fraction)))


def lr_factor(step: int, total_steps: int, warmup: int, schedule: str) -> float:
    """The lr at optimizer step `step` (0-based) as a fraction of the peak lr.

    Warm-up ramps linearly to 1 over `warmup` steps ((step + 1) / warmup, so the first step
    is not wasted at lr 0). After it, `t` runs from 0 to 1 over the remaining steps and the
    factor is 0.5 (1 + cos(pi t)) for cosine, 1 - t for onecycle (the triangular one-cycle:
    up, then linearly down to 0), or 1 for constant.
    """
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    t = (step - warmup) / max(1, total_steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * t)) if schedule == "cosine" else 1.0 - t


def lr_table(optim: OptimSpec, total_steps: int) -> torch.Tensor:
    """float32 (total_steps,): the lr of every optimizer step of a trial, in optimizer lr units."""
    warm = warmup_steps(total_steps, optim.warmup)
    return torch.tensor([optim.lr * lr_factor(s, total_steps, warm, optim.schedule) for s in range(max(1, total_steps))],
                        dtype=torch.float32)
