"""python benchmarks/gpu_throughput.py [--device cuda] [--n 60000] [--epochs 3] [--repeats 3] [--space-trials 8] [--workers 1 2 4 8]

Claims (issue 12, on an H100-class GPU), each measured side by side in one run:
- steps: a training step replayed from a CUDA graph is 5-11x faster than an eager one
  (0.3-1 ms against 3.5-4 ms), and `train_model`'s eager step costs at most a raw loop's;
- epoch: the 64/128/256 net at batch 256 trains a 54,000-image FashionMNIST epoch in <= 0.25 s;
- trials: the median 4-epoch trial of the default space takes <= 2 s, and trials/hour are
  >= 10x those of a standard Lightning trial on the same sampled architectures.

Variants:
- raw eager: a hand-written loop, no Lightning: device-resident uint8 data gathered by index,
  bf16 autocast and channels_last and fused AdamW on CUDA (fp32 on CPU), no augmentation.
- ours eager / ours CUDA graphs: `train_model` with `trainer.cuda_graphs=false` / `true`
  (bf16 and channels_last on CUDA, on-device crop+flip, chunked manual optimization).
- baseline (the standard Lightning trial): torchvision's FashionMNIST class with per-sample
  transforms (RandomCrop(28, padding=2), RandomHorizontalFlip, ToTensor, Normalize) in a
  DataLoader (num_workers=4, pinned memory), fp32, `self.log` every step, default Trainer.

All read the same FashionMNIST files (generated, random but learnable, in torchvision's
layout when `--root` has none) and train on the same 90% split. Step and epoch times count
the training phase of each epoch after the first (the first holds the warm-up and the
capture); trial times are whole `train_model` calls (set-up, validation, best weights). Then
trials/hour for 1, 2, 4, ... worker processes sharing the device (`--workers`), each with
cores // workers threads.

On CPU (`--device cpu --n 2000 --epochs 2 --repeats 1 --space-trials 2 --trial-epochs 1
--workers`) it is a smoke test: the CUDA-graph rows are skipped (they need a GPU) and the
numbers say nothing about a GPU.
"""

from __future__ import annotations

import multiprocessing
import struct
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import _common
import torch
from lightning.pytorch import Callback
from torch.nn import functional as F

from convsweep.lightning_modules.arch import ArchSpec, BlockSpec, OptimSpec
from convsweep.lightning_modules.data import ImageData, load_dataset
from convsweep.lightning_modules.data.base import seeded_split
from convsweep.lightning_modules.data.batches import to_device
from convsweep.lightning_modules.network import ArchitectureError, build_convnet, plan_convnet
from convsweep.lightning_modules.runner import TrainResult, train_model
from convsweep.lightning_modules.worker_budget import auto_workers, set_worker_threads
from convsweep.search.compose import compose_config

SMALL = ArchSpec(blocks=(BlockSpec(16), BlockSpec(32), BlockSpec(64)))  # conf/arch/small.yaml
LARGE = ArchSpec(blocks=(BlockSpec(64), BlockSpec(128), BlockSpec(256)))  # 28 -> 14 -> 7 -> 3, then GAP
NETS = {"16/32/64 @ batch 128": (SMALL, 128), "64/128/256 @ batch 256": (LARGE, 256)}
VAL_FRACTION = 0.1
NO_GRAPHS = "skipped: CUDA graphs need a CUDA device (this run is on CPU)"


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
    """Median training-phase seconds per epoch, leaving out the first (warm-up, capture) epoch when there are more."""
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
    loader = dict(batch_size=batch, num_workers=workers, pin_memory=device == "cuda", persistent_workers=workers > 0)
    return (DataLoader(Subset(full_train, train_idx.tolist()), shuffle=True, **loader),
            DataLoader(Subset(full_eval, val_idx.tolist()), **loader))


def loader_images_per_s(root: Path, device: str, batch: int, workers: int) -> float:
    """What the baseline's input pipeline alone delivers: one pass over the train loader, no model."""
    train, _ = baseline_loaders(root, device, batch, workers)
    start, n = time.perf_counter(), 0
    for x, _ in train:
        n += len(x)
    return n / (time.perf_counter() - start)


def baseline_fit(root: Path, device: str, epochs: int, arch: ArchSpec, optim: OptimSpec, workers: int,
                 timer: EpochTimer | None = None) -> None:
    """The standard Lightning trial: per-sample torchvision transforms in DataLoader workers, fp32, per-step log."""
    from lightning.pytorch import Trainer

    train, val = baseline_loaders(root, device, optim.batch_size, workers)
    net = build_convnet(arch, (1, 28, 28), 10)  # normalisation is in the transforms
    trainer = Trainer(max_epochs=epochs, accelerator="gpu" if device == "cuda" else "cpu", devices=1,
                      precision="32-true", default_root_dir=str(root / "lightning"), callbacks=[timer] if timer else [])
    trainer.fit(_common.plain_module(net, optim, epochs), train, val)


def ours_fit(data: ImageData, device: str, epochs: int, arch: ArchSpec, optim: OptimSpec, *, graphs: bool,
             timer: EpochTimer | None = None, seed: int = 0, cudnn_benchmark: bool = False) -> TrainResult:
    cfg = {"accelerator": "gpu" if device == "cuda" else "cpu", "max_epochs": epochs, "deterministic": False,
           "cuda_graphs": graphs, "cudnn_benchmark": cudnn_benchmark}
    result = train_model(data, arch, optim, cfg, seed=seed, callbacks=[timer] if timer else [])
    if graphs and not result.cuda_graphs:
        print(f"  ! CUDA graphs asked for but not used: {result.fallback_reason}")
    return result


def raw_step_ms(data: ImageData, arch: ArchSpec, batch: int, device: str, steps: int, warmup: int = 10) -> float:
    """Milliseconds per step of the hand-written eager loop (after `warmup` steps)."""
    cuda = device == "cuda"
    torch.manual_seed(0)
    net = build_convnet(arch, data.input_shape, data.num_classes, data.mean, data.std).to(device)
    if cuda:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, fused=cuda or None)
    images, labels = to_device(data.train.images, torch.device(device)), to_device(data.train.labels, torch.device(device))
    order = torch.randint(0, len(labels), (warmup + steps, batch), device=device,
                          generator=torch.Generator(device).manual_seed(0))  # (steps, B) sample indices

    def step(idx: torch.Tensor) -> None:
        x, y = images.index_select(0, idx), labels.index_select(0, idx)  # uint8 (B, 1, 28, 28), int64 (B,)
        if cuda:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device, dtype=torch.bfloat16, enabled=cuda):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(warmup):
        step(order[i])
    seconds = _common.timed(lambda: [step(order[warmup + i]) for i in range(steps)])
    return 1000.0 * seconds / steps


def step_and_epoch_times(args: Any, root: Path, data: ImageData) -> None:
    """ms/step (raw eager, ours eager, ours graphs, baseline) and epoch seconds, per net, in one table each."""
    n_train, cuda = len(data.train), args.device == "cuda"
    for name, (arch, batch) in NETS.items():
        optim = OptimSpec(batch_size=batch)
        steps = -(-n_train // batch)
        timers: dict[str, list[EpochTimer]] = {}

        def timed_fit(label: str, fit: Callable[[EpochTimer], Any]) -> Callable[[], Any]:
            def run() -> Any:
                timers.setdefault(label, []).append(EpochTimer())
                return fit(timers[label][-1])
            return run

        variants = {
            "baseline (DataLoader, fp32)": timed_fit("baseline (DataLoader, fp32)", lambda t: baseline_fit(
                root, args.device, args.epochs, arch, optim, args.loader_workers, t)),
            "ours eager": timed_fit("ours eager", lambda t: ours_fit(data, args.device, args.epochs, arch, optim,
                                                                     graphs=False, timer=t)),
        }
        if cuda:
            variants["ours CUDA graphs"] = timed_fit("ours CUDA graphs", lambda t: ours_fit(
                data, args.device, args.epochs, arch, optim, graphs=True, timer=t))
        print(f"\n## {name}: {steps} steps per {n_train}-image epoch")
        _common.interleave(variants, args.repeats, warmup=0)
        epoch_s = {label: [steady(t) for t in ts] for label, ts in timers.items()}
        ms_step = {"raw eager (no Lightning)": [raw_step_ms(data, arch, batch, args.device, min(steps, 200))
                                                for _ in range(args.repeats)],
                   **{label: [1000.0 * s / steps for s in values] for label, values in epoch_s.items()}}
        medians = _common.report(f"{name}: ms per training step (epoch's training phase / steps; raw: a timed loop)",
                                 ms_step, unit="ms", baseline="raw eager (no Lightning)")
        epochs = _common.report(f"{name}: training phase per epoch, after the first (s)", epoch_s)
        if not cuda:
            print(f"  ours CUDA graphs: {NO_GRAPHS}")
        best = "ours CUDA graphs" if cuda else "ours eager"
        print(f"RESULT {args.device} {name}: {best} {medians[best]:.3f} ms/step vs raw eager "
              f"{medians['raw eager (no Lightning)']:.3f} ms/step; epoch {epochs[best]:.3f} s vs baseline "
              f"{epochs['baseline (DataLoader, fp32)']:.3f} s ({epochs['baseline (DataLoader, fp32)'] / epochs[best]:.2f}x)")
    loader = {f"num_workers={w}": [loader_images_per_s(root, args.device, 256, w)] for w in (0, args.loader_workers)}
    _common.report("the baseline's input pipeline alone, one pass (images/s): bounds the baseline from above",
                   loader, unit="")


def sample_default_space(k: int, seed: int, input_shape: tuple[int, int, int], num_classes: int) -> list[tuple[ArchSpec, OptimSpec]]:
    """`k` (arch, optim) pairs drawn at random from conf/search_space/default.yaml, as a sweep would
    train them: architectures that do not build or exceed `search.max_macs` are skipped."""
    import optuna
    from omegaconf import OmegaConf

    from convsweep.search.space import parse_space

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = compose_config([])
    space = parse_space(OmegaConf.to_container(cfg.search_space, resolve=True))
    budget = cfg.search.get("max_macs")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out: list[tuple[ArchSpec, OptimSpec]] = []
    while len(out) < k:
        arch, optim = space.sample(study.ask())
        try:
            macs = plan_convnet(arch, input_shape, num_classes).macs
        except ArchitectureError:
            continue
        if not budget or macs <= float(budget):
            out.append((arch, optim))
    return out


def space_trials(args: Any, root: Path, data: ImageData) -> None:
    """Median trial time and trials/hour on the default space: ours against the standard trial, same archs."""
    cuda = args.device == "cuda"
    specs = sample_default_space(args.space_trials, args.seed, data.input_shape, data.num_classes)
    print(f"\n## {len(specs)} sampled trials of the default space, {args.trial_epochs} epochs each")
    times: dict[str, list[float]] = {"baseline (standard Lightning trial)": [], "ours": []}
    if cuda:
        times["ours, cudnn.benchmark=true"] = []
    for i, (arch, optim) in enumerate(specs):
        print(f"  trial {i}: depth {arch.depth}, {[b.filters for b in arch.blocks]} filters, batch {optim.batch_size}, "
              f"{optim.optimizer} lr {optim.lr:.2g}, {optim.schedule}")
        times["baseline (standard Lightning trial)"].append(_common.timed(lambda: baseline_fit(
            root, args.device, args.trial_epochs, arch, optim, args.loader_workers)))
        times["ours"].append(_common.timed(lambda: ours_fit(data, args.device, args.trial_epochs, arch, optim,
                                                            graphs=cuda, seed=i)))
        if cuda:  # the cudnn policy (conf/trainer/default.yaml): autotuning per new arch against heuristics
            times["ours, cudnn.benchmark=true"].append(_common.timed(lambda: ours_fit(
                data, args.device, args.trial_epochs, arch, optim, graphs=True, seed=i, cudnn_benchmark=True)))
    medians = _common.report("trial wall time, same sampled archs (s)", times)
    per_hour = {name: [3600.0 / s for s in values] for name, values in times.items()}
    rates = _common.report("trials/hour, one process (higher is better)", per_hour, unit="/h")
    ours = "ours (CUDA graphs)" if cuda else "ours (eager; no CUDA graphs on CPU)"
    print(f"RESULT {args.device}: median {args.trial_epochs}-epoch trial {medians['ours']:.2f} s ({ours}) vs "
          f"{medians['baseline (standard Lightning trial)']:.2f} s; trials/hour "
          f"{rates['ours'] / rates['baseline (standard Lightning trial)']:.2f}x the standard trial (GPU target >= 10x)")


def _trial_worker(device: str, n_workers: int, epochs: int, n_trials: int, barrier: Any, queue: Any) -> None:
    """One worker process: take its share of the cores, warm up with one trial, wait for the others, time `n_trials`."""
    set_worker_threads(n_workers)
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
    procs = [ctx.Process(target=_trial_worker, args=(device, n_workers, epochs, n_trials, barrier, queue))
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
    p.add_argument("--epochs", type=int, default=3, help="epochs of the step/epoch timing fits (the first is left out)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--loader-workers", type=int, default=4, help="the baseline DataLoader's num_workers")
    p.add_argument("--space-trials", type=int, default=8, help="archs sampled from the default space (0 = skip)")
    p.add_argument("--trial-epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0, help="seeds the space sampling")
    p.add_argument("--workers", type=int, nargs="*", default=[1, 2, 4, 8], help="trial processes per device")
    p.add_argument("--trials", type=int, default=4, help="timed trials per worker process")
    args = p.parse_args()
    _common.banner("benchmarks/gpu_throughput.py", args)
    print(f"# MEASURED ON {args.device.upper()}" + ("" if args.device == "cuda" else
                                                     ": a smoke test; these numbers are not GPU results"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root) if args.root else Path(tmp)
        if not (root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte").exists():
            write_fashion_mnist(root, args.n, max(args.n // 6, 100))
        data = load_dataset({"name": "fashion_mnist", "root": str(root), "download": False,
                             "val_fraction": VAL_FRACTION, "seed": 0, "augment": {"crop_padding": 2, "hflip": True}})
        step_and_epoch_times(args, root, data)
        if args.space_trials:
            space_trials(args, root, data)
    if args.workers:
        rates = {f"{n} worker(s)": [trials_per_hour(args.device, n, 2, args.trials)] for n in args.workers}
        _common.report("small-CNN trials/hour (2 epochs on shapes), workers per device", rates, unit="/h")
        print(f"search.n_workers=auto would pick {auto_workers(args.device)} here")


if __name__ == "__main__":
    main()
