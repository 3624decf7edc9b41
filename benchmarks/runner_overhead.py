"""python benchmarks/runner_overhead.py [--epochs 3] [--repeats 5] [--threads 1] [--profile] [overrides]

Claim: a trial trained by `train_model` (the lean Lightning Trainer) costs at most 1.10x a
hand-written PyTorch loop doing the same work. Both train the same net (`arch: small`) on the
same data (the default shapes dataset, `compose_config([])`) with the same batch size, epochs,
seed, optimizer, cosine schedule and the same `DeviceBatches` data path (device-resident
uint8 batches, on-device crop+flip), validating every epoch; only the runner differs.
A second baseline is plain Lightning as most tutorials write it: the default Trainer
(progress bar, sanity check, model summary, logger, checkpoints), `self.log` every step, and
a DataLoader over a TensorDataset (same augmentation, applied to each batch in the step).

Variants run interleaved (raw, ours, plain, raw, ours, plain, ...); medians are reported.
`--profile` prints a cProfile of one `train_model` call instead.
"""

from __future__ import annotations

import cProfile
import pstats
import tempfile

import _common  # noqa: F401 - puts the repo root on sys.path
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from convsweep.lightning_modules.arch import ArchSpec, OptimSpec
from convsweep.lightning_modules.data import ImageData, load_dataset, make_batches
from convsweep.lightning_modules.network import build_convnet
from convsweep.lightning_modules.runner import train_model
from convsweep.search.compose import compose_config


def raw_loop(data: ImageData, arch: ArchSpec, optim: OptimSpec, epochs: int, seed: int) -> float:
    """The hand-written reference: train, validate each epoch, keep the best weights; returns best val acc."""
    torch.manual_seed(seed)
    net = build_convnet(arch, data.input_shape, data.num_classes, data.mean, data.std)
    opt = torch.optim.AdamW(net.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    train = make_batches(data.train, optim.batch_size, "cpu", train=True, augment=data.augment, seed=seed)
    val = make_batches(data.val, max(optim.batch_size, 256), "cpu", train=False)
    best = -1.0
    for _ in range(epochs):
        net.train()
        loss_sum = torch.zeros(())
        for x, y in train:  # uint8 (B, 1, 28, 28), int64 (B,)
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
        sched.step()
        net.eval()
        correct = torch.zeros(())
        with torch.no_grad():
            for x, y in val:
                correct += (net(x).argmax(1) == y).sum()
        acc = float(correct) / len(data.val)  # one host sync per epoch
        if acc > best:
            best, _ = acc, {k: v.detach().clone() for k, v in net.state_dict().items()}  # the copy EpochHistory makes
    return best


def plain_lightning(data: ImageData, arch: ArchSpec, optim: OptimSpec, epochs: int, seed: int, root: str) -> None:
    from lightning.pytorch import Trainer, seed_everything

    seed_everything(seed, verbose=False)
    net = build_convnet(arch, data.input_shape, data.num_classes, data.mean, data.std)
    train = DataLoader(TensorDataset(data.train.images, data.train.labels), batch_size=optim.batch_size, shuffle=True)
    val = DataLoader(TensorDataset(data.val.images, data.val.labels), batch_size=max(optim.batch_size, 256))
    trainer = Trainer(max_epochs=epochs, accelerator="cpu", devices=1, default_root_dir=root)
    trainer.fit(_common.plain_module(net, optim, epochs, data.augment, seed), train, val)


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads for all variants (1: stable timings on a shared 2-core machine)")
    p.add_argument("--no-plain", action="store_true", help="skip the plain-Lightning baseline")
    p.add_argument("--profile", action="store_true", help="cProfile one train_model call and exit")
    p.add_argument("--sort", default="tottime", help="pstats sort key for --profile (tottime, cumulative)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. optim.batch_size=256 dataset.n_train=6000")
    args = p.parse_args()
    cfg = compose_config(["trainer.accelerator=cpu", f"trainer.max_epochs={args.epochs}",
                          f"trainer.num_threads={args.threads}", *args.overrides])
    torch.set_num_threads(args.threads)
    data = load_dataset(cfg.dataset)
    arch, optim = ArchSpec.from_dict(cfg.arch), OptimSpec.from_dict(cfg.optim)
    _common.banner("benchmarks/runner_overhead.py", args)
    print(f"# data: {data.name} {data.sizes()} {data.input_shape}; arch {arch.to_dict()['blocks']}; "
          f"batch {optim.batch_size}; {args.epochs} epochs; {len(data.train) // optim.batch_size + 1} steps/epoch")

    def ours() -> None:
        train_model(data, arch, optim, cfg.trainer, seed=args.seed)

    if args.profile:
        ours()
        profile = cProfile.Profile()
        profile.runcall(ours)
        pstats.Stats(profile).sort_stats(args.sort).print_stats(40)
        return
    variants = {"raw loop": lambda: raw_loop(data, arch, optim, args.epochs, args.seed), "ours (train_model)": ours}
    with tempfile.TemporaryDirectory() as root:
        if not args.no_plain:
            variants["plain Lightning"] = lambda: plain_lightning(data, arch, optim, args.epochs, args.seed, root)
        times = _common.interleave(variants, args.repeats)
    wall = _common.report(f"one trial of {args.epochs} epochs, wall seconds (lower is better)", times.wall)
    cpu = _common.report(f"one trial of {args.epochs} epochs, CPU seconds of this process", times.cpu)
    steps = args.epochs * (len(data.train) // optim.batch_size + 1)
    print(f"  raw loop: {1000 * wall['raw loop'] / steps:.1f} ms wall per training step (validation included)")
    ours = "ours (train_model)"
    print(f"RESULT ours/raw = {wall[ours] / wall['raw loop']:.3f} wall, {cpu[ours] / cpu['raw loop']:.3f} CPU (target <= 1.10)")


if __name__ == "__main__":
    main()
