"""python benchmarks/compile_payoff.py [--repeats 3] [--epochs 2] [--threads 1] [--sampled] [overrides]

Question: does `trainer.compile=true` (torch.compile of the network) pay off for repeated
small trials on CPU? Every trial builds a fresh network, so every trial pays for compiling
(the first in a process the most, later ones hit the caches where the architecture repeats).
Trials of the default config (shapes, `arch: small`) run interleaved in one process:
eager, compiled, eager, compiled, ... with no warm-up, so round 1 shows the cold compile.
With `--sampled` each round trains a new architecture and optimizer setting drawn from the
default search space (seeded random sampler), as a sweep does: both variants of a round
train the same one, and every compiled round compiles a new graph.
"""

from __future__ import annotations

from typing import Iterator

import _common
import optuna
import torch
from omegaconf import DictConfig, OmegaConf

from convsweep.lightning_modules.arch import ArchSpec, OptimSpec
from convsweep.lightning_modules.data import ImageData, load_dataset
from convsweep.lightning_modules.network import ArchitectureError, plan_convnet
from convsweep.lightning_modules.runner import train_model
from convsweep.search.compose import compose_config
from convsweep.search.space import parse_space


def sampled_specs(cfg: DictConfig, data: ImageData) -> Iterator[tuple[ArchSpec, OptimSpec]]:
    """Buildable (arch, optim) pairs from the configured search space, seeded."""
    space = parse_space(OmegaConf.to_container(cfg.search_space), "search_space")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    while True:
        trial = study.ask()
        arch, optim = space.sample(trial)
        study.tell(trial, 0.0)
        try:
            plan_convnet(arch, data.input_shape, data.num_classes)
        except ArchitectureError:
            continue
        yield arch, optim


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--sampled", action="store_true", help="a new sampled architecture every round, as in a sweep")
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. arch=small dataset.n_train=6000")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    base = ["trainer.accelerator=cpu", f"trainer.max_epochs={args.epochs}", f"trainer.num_threads={args.threads}",
            *args.overrides]
    eager, compiled = compose_config([*base, "trainer.compile=false"]), compose_config([*base, "trainer.compile=true"])
    data = load_dataset(eager.dataset)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    specs = sampled_specs(eager, data)
    current = [(ArchSpec.from_dict(eager.arch), OptimSpec.from_dict(eager.optim))]
    _common.banner("benchmarks/compile_payoff.py", args)

    def eager_trial() -> None:  # runs first in each round, so it draws the round's architecture
        if args.sampled:
            current[0] = next(specs)
        train_model(data, *current[0], eager.trainer, seed=0)

    times = _common.interleave({
        "eager": eager_trial,
        "torch.compile": lambda: train_model(data, *current[0], compiled.trainer, seed=0),
    }, args.repeats, warmup=0)
    _common.report(f"one {args.epochs}-epoch trial, wall s, all rounds (round 1 compiles cold)", times.wall)
    later = {name: values[1:] or values for name, values in times.wall.items()}
    medians = _common.report("rounds 2+ (caches warm)", later)
    first = times.wall["torch.compile"][0] / times.wall["eager"][0]
    print(f"RESULT torch.compile/eager = {first:.2f} on the first trial, "
          f"{medians['torch.compile'] / medians['eager']:.2f} on later trials (below 1 means compile pays off)")


if __name__ == "__main__":
    main()
