"""Measured inference latency of a trained net: the `model/latency_ms` objective of a multi-objective sweep.

MACs count work, not time: on a small CPU a deep net of thin layers can cost more milliseconds
than a shallow wide one with the same MACs, so a sweep that must meet a latency target
measures it. One image at a time (batch 1), as a deployed classifier sees it.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

WARMUP = 3  # untimed calls first: allocator, lazy kernel choice
REPEATS = 15  # timed calls; the median ignores a hiccup from a process sharing the cores


@torch.inference_mode()
def inference_latency_ms(model: nn.Module, input_shape: tuple[int, int, int], device: str = "cpu") -> float:
    """Median milliseconds for one forward pass of one raw uint8 image (C, H, W) on `device`.

    The model is moved to `device` for the measurement and back to where it was afterwards.
    """
    home = next(model.parameters()).device
    model = model.to(device).eval()
    x = torch.zeros((1, *input_shape), dtype=torch.uint8, device=device)  # (1, C, H, W), normalised inside the net
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    times = []
    for i in range(WARMUP + REPEATS):
        sync()
        start = time.perf_counter()
        model(x)
        sync()
        if i >= WARMUP:
            times.append(time.perf_counter() - start)
    model.to(home)
    return 1000.0 * statistics.median(times)
