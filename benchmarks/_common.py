"""Shared by every benchmark script: interleaved timing, medians, ratios and the machine line.

A benchmark compares variants measured side by side in one run. `interleave` runs them in
turn (A B C A B C ...), so a load spike from another process hits every variant alike, and
`report` prints each variant's median with the ratio against the baseline.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/x.py` puts benchmarks/ on the path, not the repo root
    sys.path.insert(0, str(ROOT))


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose help is the script's docstring (which starts with its command)."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def machine() -> str:
    """One line: CPU model and cores, load average, torch version and device."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    line = f"{os.cpu_count()}-core {model}; load average {load}; python {platform.python_version()}"
    if "torch" in sys.modules:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
        line += f"; torch {torch.__version__} ({torch.get_num_threads()} threads), {gpu}"
    return line


def timed(fn: Callable[[], object]) -> float:
    """Wall seconds of one call (CUDA work is waited for, so GPU timings are complete)."""
    return _measure(fn)[0]


def _measure(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU) seconds of one call; CPU time is this process's, all threads, children excluded."""
    torch = sys.modules.get("torch")
    sync = torch.cuda.synchronize if torch is not None and torch.cuda.is_available() else (lambda: None)
    sync()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    sync()
    return time.perf_counter() - wall, time.process_time() - cpu


@dataclass
class Timings:
    """Seconds per call of each variant, in run order: wall clock, and this process's CPU time.

    On a shared machine CPU time is the steadier measure of work done in-process (it does
    not count time spent waiting for a core); wall time is what a user waits.
    """

    wall: dict[str, list[float]]
    cpu: dict[str, list[float]]


def interleave(variants: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1) -> Timings:
    """Run every variant `warmup` times untimed, then `repeats` rounds of A B C ...

    Args:
        variants: name -> zero-argument callable; the first is the baseline in `report`.
        repeats: timed rounds.
        warmup: untimed rounds first (imports, allocator, caches).
    """
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    out = Timings({name: [] for name in variants}, {name: [] for name in variants})
    for r in range(repeats):
        for name, fn in variants.items():
            wall, cpu = _measure(fn)
            out.wall[name].append(wall)
            out.cpu[name].append(cpu)
        print(f"  round {r + 1}/{repeats}: " + ", ".join(
            f"{n} {out.wall[n][-1]:.3f} s (cpu {out.cpu[n][-1]:.3f})" for n in variants), flush=True)
    return out


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def report(title: str, times: Mapping[str, Sequence[float]], unit: str = "s", baseline: str | None = None,
           scale: float = 1.0) -> dict[str, float]:
    """Print each variant's median (x `scale`, in `unit`), spread and ratio to `baseline`; returns the medians.

    The ratio is median(variant) / median(baseline): above 1 means slower (for times). The
    paired ratio is the median over rounds of variant / baseline within the same round, which
    cancels load that changes slowly between rounds.
    """
    medians = {name: median(values) * scale for name, values in times.items()}
    base = baseline or next(iter(times))
    width = max(28, *(len(name) for name in times))
    print(f"\n{title}")
    print(f"  {'variant':<{width}} {'median':>12} {'min':>10} {'max':>10} {'n':>3}  ratio vs {base}  (paired)")
    for name, values in times.items():
        lo, hi = min(values) * scale, max(values) * scale
        ratio = medians[name] / medians[base] if medians[base] else float("nan")
        paired = median([v / b for v, b in zip(values, times[base]) if b]) if len(values) == len(times[base]) else ratio
        print(f"  {name:<{width}} {medians[name]:>10.3f}{unit:<2} {lo:>10.3f} {hi:>10.3f} {len(values):>3}  "
              f"{ratio:.3f}x  ({paired:.3f}x)")
    return medians


def banner(script: str, args: argparse.Namespace) -> None:
    """What was run, where, and when: the header every result block in RESULTS.md starts with."""
    print(f"# {script} {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"# machine: {machine()}")
    print(f"# args: {vars(args)}")


def plain_module(net: Any, optim: Any, max_epochs: int, augment: Any = None, seed: int = 0) -> Any:
    """The tutorial-style LightningModule both Lightning baselines train: `self.log` every step.

    Automatic optimization, the trial's optimizer (Adam, AdamW or SGD at `optim.lr`) with a
    per-epoch cosine schedule, fp32, and the per-step logging most examples use; `augment` (an
    `Augment`) crops and flips each batch in the step when the DataLoader does not.
    """
    import torch
    from lightning.pytorch import LightningModule
    from torch.nn import functional as F

    from convsweep.lightning_modules.data.batches import augment_batch

    class PlainModule(LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net, self.augment, self.generator = net, augment, torch.Generator().manual_seed(seed)

        def forward(self, x: Any) -> Any:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            x, y = batch
            if self.augment is not None:
                x = augment_batch(x, self.augment, self.generator)
            logits = self(x)
            loss = F.cross_entropy(logits, y)
            self.log("train/loss", loss, prog_bar=True)
            self.log("train/acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            x, y = batch
            logits = self(x)
            self.log("val/loss", F.cross_entropy(logits, y), prog_bar=True)
            self.log("val/acc", (logits.argmax(1) == y).float().mean(), prog_bar=True)

        def configure_optimizers(self) -> Any:
            if optim.optimizer == "sgd":
                opt = torch.optim.SGD(self.parameters(), lr=optim.lr, momentum=optim.momentum,
                                      weight_decay=optim.weight_decay, nesterov=optim.momentum > 0)
            else:
                cls = torch.optim.AdamW if optim.optimizer == "adamw" else torch.optim.Adam
                opt = cls(self.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, max_epochs))
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    return PlainModule()
