"""python benchmarks/gpu_throughput.py [--device cuda] [--n 60000] [--epochs 3] [--repeats 3] [--workers 1 2 4]

Claim (on a GPU): a trial trained by `train_model` runs at least 10x the images/s of a
standard Lightning trial, and a FashionMNIST epoch (60,000 28x28 images, 3 conv blocks of
64/128/256 filters, batch 256) takes at most 0.5 s on an H100.

- baseline: the same network in a LightningModule that calls `self.log` every step, fp32,
  fed by a torchvision DataLoader (num_workers=4, pinned memory) over torchvision's
  FashionMNIST class with per-sample transforms (RandomCrop(28, padding=2),
  RandomHorizontalFlip, ToTensor, Normalize), default Trainer.
- ours: `train_model` with the config's trainer (precision=auto -> bf16-mixed on CUDA,
  channels_last=auto, deterministic=false so cudnn.benchmark is on), device-resident
  uint8 batches with on-device crop+flip, metrics accumulated on the device.

Both read the same FashionMNIST files (generated, random but learnable, in torchvision's
on-disk layout when `--root` has no real ones) and train on the same 90% split. Variants run
interleaved; images/s counts training images over the training phase of each epoch after
the first (warm-up), and the whole fit's wall time is reported too. The baseline's input
pipeline is also timed alone (one pass over its DataLoader, no model, 0 and 4 workers): the
baseline cannot train faster than it loads, so this bounds the achievable ratio.

Then trials/hour for 1, 2, 4 worker processes sharing the device, each running small-CNN
trials (the default shapes dataset and `arch: small`) back to back.

On CPU (`--device cpu --n 2000 --epochs 1 --repeats 1`) it is a smoke test: the numbers say
nothing about a GPU.
"""

from __future__ import annotations

import multiprocessing
import os
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
import torch
from lightning.pytorch import Callback

from convsweep.lightning_modules.arch import ArchSpec, BlockSpec, OptimSpec
from convsweep.lightning_modules.data import load_dataset
from convsweep.lightning_modules.data.base import seeded_split
from convsweep.lightning_modules.network import build_convnet
from convsweep.lightning_modules.runner import train_model
from convsweep.search.compose import compose_config

ARCH = ArchSpec(blocks=(BlockSpec(64), BlockSpec(128), BlockSpec(256)))  # 28 -> 14 -> 7 -> 3, then GAP
VAL_FRACTION = 0.1


def write_fashion_mnist(root: Path, n_train: int, n_test: int, seed: int = 0) -> None:
    """Random-but-learnable FashionMNIST-shaped files in torchvision's layout (<root>/FashionMNIST/raw/).

    Each class is a smooth random template; an image is its class template shifted by up to
    3 px, with random contrast and pixel noise, so a CNN learns it and a lookup does not.
    """
    g = torch.Generator().manual_seed(seed)
    templates = torch.nn.functional.interpolate(torch.rand(10, 1, 7, 7, generator=g), size=28, mode="bilinear")[:, 0]
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = torch.randint(0, 10, (n,), generator=g)
        shifts = torch.randint(-3, 4, (2,), generator=g).tolist()
        images = templates[labels].roll(shifts, dims=(1, 2)) * (0.5 + torch.rand(n, 1, 1, generator=g))
        images = (images + 0.2 * torch.randn(n, 28, 28, generator=g)).clamp(0, 1).mul(255).to(torch.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.numpy().tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.to(torch.uint8).numpy().tobytes())


class EpochTimer(Callback):
    """Wall seconds of each epoch's training phase (first step to last, device work included)."""

    def __init__(self) -> None:
        self.train_s: list[float] = []
        self._start = 0.0

    def _now(self) -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._start = self._now()

    def on_validation_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.sanity_checking:
            self.train_s.append(self._now() - self._start)


def steady(timer: EpochTimer) -> float:
    """Median training-phase seconds per epoch, leaving out the first (warm-up) epoch when there are more."""
    return _common.median(timer.train_s[1:] or timer.train_s)


def baseline_loaders(root: Path, device: str, batch: int, workers: int) -> tuple[Any, Any]:
    """The standard input pipeline: torchvision's FashionMNIST with per-sample transforms, DataLoader workers."""
    from torch.utils.data import DataLoader, Subset
    from torchvision import datasets, transforms

    train_tf = transforms.Compose([transforms.RandomCrop(28, padding=2), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), transforms.Normalize((0.5,), (0.25,))])
    eval_tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.25,))])
    full_train, full_eval = (datasets.FashionMNIST(str(root), train=True, transform=tf) for tf in (train_tf, eval_tf))
    val_idx, train_idx = seeded_split(len(full_train), (VAL_FRACTION,), 0)
    loader = dict(batch_size=batch, num_workers=workers, pin_memory=device == "cuda")
    return (DataLoader(Subset(full_train, train_idx.tolist()), shuffle=True, **loader),
            DataLoader(Subset(full_eval, val_idx.tolist()), **loader))


def loader_images_per_s(root: Path, device: str, batch: int, workers: int) -> float:
    """What the baseline's input pipeline alone delivers: one pass over the train loader, no model."""
    train, _ = baseline_loaders(root, device, batch, workers)
    start, n = time.perf_counter(), 0
    for x, _ in train:
        n += len(x)
    return n / (time.perf_counter() - start)


def baseline_fit(root: Path, device: str, epochs: int, batch: int, workers: int, timer: EpochTimer) -> None:
    """The standard Lightning trial: per-sample torchvision transforms in DataLoader workers, fp32, per-step log."""
    from lightning.pytorch import Trainer

    train, val = baseline_loaders(root, device, batch, workers)
    net = build_convnet(ARCH, (1, 28, 28), 10)  # normalisation is in the transforms
    trainer = Trainer(max_epochs=epochs, accelerator="gpu" if device == "cuda" else "cpu", devices=1,
                      precision="32-true", default_root_dir=str(root / "lightning"), callbacks=[timer])
    trainer.fit(_common.plain_module(net, OptimSpec(batch_size=batch), epochs), train, val)


def ours_fit(data: Any, device: str, epochs: int, batch: int, timer: EpochTimer) -> None:
    trainer_cfg = {"accelerator": "gpu" if device == "cuda" else "cpu", "max_epochs": epochs,
                   "precision": "auto", "deterministic": False, "channels_last": "auto", "cudnn_benchmark": "auto"}
    train_model(data, ARCH, OptimSpec(batch_size=batch), trainer_cfg, seed=0, callbacks=[timer])


def throughput(args: Any, root: Path) -> None:
    data = load_dataset({"name": "fashion_mnist", "root": str(root), "download": False, "val_fraction": VAL_FRACTION,
                         "seed": 0, "augment": {"crop_padding": 2, "hflip": True}})
    n_train = len(data.train)
    timers: dict[str, list[EpochTimer]] = {"baseline (DataLoader, fp32)": [], "ours (train_model)": []}

    def timer(name: str) -> EpochTimer:
        timers[name].append(EpochTimer())
        return timers[name][-1]

    variants = {
        "baseline (DataLoader, fp32)": lambda: baseline_fit(root, args.device, args.epochs, args.batch,
                                                            args.loader_workers, timer("baseline (DataLoader, fp32)")),
        "ours (train_model)": lambda: ours_fit(data, args.device, args.epochs, args.batch, timer("ours (train_model)")),
    }
    fit_s = _common.interleave(variants, args.repeats, warmup=0).wall
    epoch_s = {name: [steady(t) for t in ts] for name, ts in timers.items()}
    images = {name: [n_train / s for s in values] for name, values in epoch_s.items()}
    _common.report(f"whole fit, {args.epochs} epochs incl. validation and start-up (s)", fit_s)
    _common.report("training phase per epoch, after warm-up (s)", epoch_s)
    medians = _common.report("training throughput (images/s, higher is better)", images, unit="")
    loader = {f"num_workers={w}": [loader_images_per_s(root, args.device, args.batch, w)] for w in (0, args.loader_workers)}
    _common.report("the baseline's input pipeline alone, one pass (images/s): bounds the baseline from above", loader, unit="")
    speedup = medians["ours (train_model)"] / medians["baseline (DataLoader, fp32)"]
    print(f"RESULT {args.device}: ours/baseline images/s = {speedup:.2f}x (GPU target >= 10x); "
          f"ours {n_train / medians['ours (train_model)']:.3f} s per {n_train}-image epoch (H100 target <= 0.5 s)")


def _trial_worker(device: str, threads: int, epochs: int, n_trials: int, barrier: Any, queue: Any) -> None:
    """One worker process: warm up with one trial, wait for the others, then time `n_trials` trials."""
    torch.set_num_threads(threads)
    cfg = compose_config([f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}", f"trainer.max_epochs={epochs}"])
    data = load_dataset(cfg.dataset)
    arch, optim = ArchSpec.from_dict(cfg.arch), OptimSpec.from_dict(cfg.optim)
    train_model(data, arch, optim, cfg.trainer, seed=0)
    barrier.wait()
    start = time.monotonic()
    for i in range(n_trials):
        train_model(data, arch, optim, cfg.trainer, seed=i + 1)
    queue.put((start, time.monotonic()))


def trials_per_hour(device: str, n_workers: int, epochs: int, n_trials: int) -> float:
    """Trials/hour of `n_workers` spawned processes sharing the device, start-up and warm-up excluded."""
    ctx = multiprocessing.get_context("spawn")
    barrier, queue = ctx.Barrier(n_workers), ctx.Queue()
    threads = max(1, (os.cpu_count() or 1) // n_workers)
    procs = [ctx.Process(target=_trial_worker, args=(device, threads, epochs, n_trials, barrier, queue))
             for _ in range(n_workers)]
    for proc in procs:
        proc.start()
    spans = [queue.get() for _ in procs]
    for proc in procs:
        proc.join()
    wall = max(end for _, end in spans) - min(start for start, _ in spans)
    return 3600.0 * n_workers * n_trials / wall


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    p.add_argument("--n", type=int, default=60_000, help="FashionMNIST-shaped train images to generate")
    p.add_argument("--root", default=None, help="folder with real FashionMNIST files (default: generate in a temp dir)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--loader-workers", type=int, default=4, help="the baseline DataLoader's num_workers")
    p.add_argument("--workers", type=int, nargs="*", default=[1, 2, 4], help="trial processes per device")
    p.add_argument("--trial-epochs", type=int, default=2)
    p.add_argument("--trials", type=int, default=4, help="timed trials per worker process")
    args = p.parse_args()
    _common.banner("benchmarks/gpu_throughput.py", args)
    print(f"# MEASURED ON {args.device.upper()}" + ("" if args.device == "cuda" else
                                                     ": a smoke test; these numbers are not GPU results"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root) if args.root else Path(tmp)
        if not (root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists():
            write_fashion_mnist(root, args.n, max(args.n // 6, 100))
        throughput(args, root)
    if args.workers:
        rates = {f"{n} worker(s)": [trials_per_hour(args.device, n, args.trial_epochs, args.trials)] for n in args.workers}
        _common.report(f"small-CNN trials/hour ({args.trial_epochs} epochs on shapes), workers per device", rates, unit="/h")


if __name__ == "__main__":
    main()
