"""python benchmarks/search_overhead.py [--sizes 100 1000] [--measure 10] [--compare OVERRIDES ...] [--window RECENT BEST ...] [overrides]

Claim: the sampler and the study storage together cost at most 60 ms per trial with 1,000
finished trials in the study. One trial's search work is what the sweep does around
training: `study.ask()`, the define-by-run `space.sample(trial)` (the default search space),
`trial.report` + `trial.should_prune` once per epoch, and `study.tell`. The sampler and
pruner are the configured ones (conf/sampler/tpe.yaml: multivariate, group, constant_liar;
conf/pruner/median.yaml), on the default storage (a JournalStorage file) and, side by side,
on in-memory storage. Training is replaced by a synthetic learning curve, so only search
time is measured. `--compare '+sampler.n_ei_candidates=8'` adds a variant with other
sampler settings (Hydra overrides) on its own journal file holding the same trials;
`--window 200 20` adds the configured TPE fitted on the latest 200 plus the best 20 trials
only (a prototype, `WindowedTPE`, to measure what windowing the history would save). For
scale, one small trial (the default config) is trained and timed too.

The studies are filled with random-sampler trials (same space, same synthetic curves,
median pruning), then the measured trials alternate between the variants.
"""

from __future__ import annotations

import math
import random
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import _common
import optuna
import torch
from omegaconf import OmegaConf
from optuna.storages.journal import JournalFileBackend, JournalStorage

from convsweep.lightning_modules.arch import ArchSpec, OptimSpec
from convsweep.lightning_modules.data import load_dataset
from convsweep.lightning_modules.runner import train_model
from convsweep.search.compose import compose_config
from convsweep.search.allowlist import safe_instantiate
from convsweep.search.space import SearchSpace, parse_space
from convsweep.search.samplers import make_sampler

PHASES = ("ask", "sample", "report+prune", "tell")


def curve(trial: optuna.Trial, epoch: int, rng: random.Random) -> float:
    """A synthetic val/acc after `epoch`: better near lr=3e-3 and with more filters, saturating, noisy."""
    quality = 0.95 - 0.08 * abs(math.log10(trial.params.get("optim.lr", 3e-3)) + 2.5) \
        + 0.002 * trial.params.get("block1.filters", 8) + rng.gauss(0, 0.01)
    return quality * (1 - math.exp(-(epoch + 1) / 3))


def search_trial(study: optuna.Study, space: SearchSpace, epochs: int, rng: random.Random,
                 phases: dict[str, list[float]] | None = None) -> None:
    """One trial's search work around a (synthetic) fit; adds seconds per phase to `phases`."""
    marks = [time.perf_counter()]
    trial = study.ask()
    marks.append(time.perf_counter())
    space.sample(trial)
    marks.append(time.perf_counter())
    state, value = optuna.trial.TrialState.COMPLETE, 0.0
    for epoch in range(epochs):
        value = curve(trial, epoch, rng)
        trial.report(value, epoch)
        if trial.should_prune():
            state = optuna.trial.TrialState.PRUNED
            break
    marks.append(time.perf_counter())
    study.tell(trial, value if state == optuna.trial.TrialState.COMPLETE else None, state=state)
    marks.append(time.perf_counter())
    if phases is not None:
        for name, a, b in zip(PHASES, marks, marks[1:]):
            phases[name].append(b - a)


class WindowedView:
    """A study as TPE's estimators see it in the `--window` variant: the best trials plus the latest ones.

    TPE refits its Parzen estimators on every finished trial for every suggestion, so its cost
    grows with the study. This measures what a window would save; it is a prototype in the
    benchmark, not a sampler the sweep uses.
    """

    def __init__(self, study: optuna.Study, recent: int, best: int) -> None:
        self._study, self._recent, self._best = study, recent, best

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)

    def _get_trials(self, deepcopy: bool = True, states: Any = None, use_cache: bool = False) -> list:
        trials = self._study._get_trials(deepcopy=deepcopy, states=states, use_cache=use_cache)
        if len(trials) <= self._recent + self._best:
            return trials
        done = [t for t in trials[:-self._recent] if t.state == optuna.trial.TrialState.COMPLETE]
        sign = -1 if self._study.direction == optuna.study.StudyDirection.MAXIMIZE else 1
        best = sorted(done, key=lambda t: sign * t.value)[:self._best]
        return sorted(best, key=lambda t: t.number) + trials[-self._recent:]


class WindowedTPE(optuna.samplers.TPESampler):
    """TPE whose estimators see `WindowedView`; the search space is still inferred from every trial."""

    def __init__(self, recent: int, best: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._window = (recent, best)

    def sample_relative(self, study: optuna.Study, trial: Any, search_space: Any) -> Any:
        return super().sample_relative(WindowedView(study, *self._window), trial, search_space)  # type: ignore[arg-type]

    def sample_independent(self, study: optuna.Study, trial: Any, name: str, dist: Any) -> Any:
        return super().sample_independent(WindowedView(study, *self._window), trial, name, dist)  # type: ignore[arg-type]


def windowed_sampler(cfg: Any, recent: int, best: int) -> WindowedTPE:
    """The configured TPE (conf/sampler/tpe.yaml) with a history window."""
    kwargs = {k: v for k, v in OmegaConf.to_container(cfg.sampler, resolve=True).items() if k != "_target_"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return WindowedTPE(recent, best, **kwargs)


def make_study(cfg: Any, space: SearchSpace, storage: Any, name: str, sampler: Any = None) -> optuna.Study:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                   sampler=sampler or make_sampler(cfg, space), pruner=safe_instantiate(cfg.pruner))


def small_trial_seconds(threads: int) -> float:
    """Wall seconds of one trial of the default config (shapes, `arch: small`), CPU."""
    torch.set_num_threads(threads)
    cfg = compose_config(["trainer.accelerator=cpu", f"trainer.num_threads={threads}"])
    data = load_dataset(cfg.dataset)
    return _common.timed(lambda: train_model(data, ArchSpec.from_dict(cfg.arch), OptimSpec.from_dict(cfg.optim),
                                             cfg.trainer, seed=0))


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[100, 1000], help="finished trials before measuring")
    p.add_argument("--measure", type=int, default=10, help="measured trials per storage and size")
    p.add_argument("--epochs", type=int, default=10, help="report + should_prune calls per trial")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for the small trial")
    p.add_argument("--no-trial", action="store_true", help="skip timing a small trial")
    p.add_argument("--compare", action="append", default=[], metavar="OVERRIDES",
                   help="also measure these sampler settings on a journal file, e.g. --compare '+sampler.n_ei_candidates=8'")
    p.add_argument("--window", type=int, nargs=2, action="append", default=[], metavar=("RECENT", "BEST"),
                   help="also measure TPE fitted on the latest RECENT trials plus the BEST best ones (journal file)")
    p.add_argument("overrides", nargs="*", help="Hydra overrides applied to every variant")
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cfg = compose_config(list(args.overrides))
    space = parse_space(OmegaConf.to_container(cfg.search_space), "search_space")
    _common.banner("benchmarks/search_overhead.py", args)
    print(f"# sampler: {OmegaConf.to_container(cfg.sampler)}; pruner: {OmegaConf.to_container(cfg.pruner)}")
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        filler = make_study(cfg, space, None, "fill", optuna.samplers.RandomSampler(seed=0))

        def journal(i: int) -> JournalStorage:
            return JournalStorage(JournalFileBackend(str(Path(tmp) / f"journal-{i}.log")))

        studies = {"in-memory": make_study(cfg, space, None, "bench"),
                   "journal file": make_study(cfg, space, journal(0), "bench")}
        for i, extra in enumerate(args.compare, start=1):  # other sampler settings, same trials, same storage kind
            studies[f"journal, {extra}"] = make_study(compose_config([*args.overrides, *extra.split()]), space,
                                                      journal(i), "bench")
        for j, (recent, best) in enumerate(args.window, start=len(args.compare) + 1):
            studies[f"journal, TPE window {recent}+{best}"] = make_study(cfg, space, journal(j), "bench",
                                                                       windowed_sampler(cfg, recent, best))
        results: dict[int, float] = {}
        copied = 0  # filler trials already in both studies (the measured trials come on top)
        for size in sorted(args.sizes):
            while len(filler.trials) < size:
                search_trial(filler, space, args.epochs, rng)
            for study in studies.values():
                study.add_trials(filler.get_trials(deepcopy=False)[copied:size])
            copied = size
            phases: dict[str, dict[str, list[float]]] = {name: {ph: [] for ph in PHASES} for name in studies}
            variants = {name: (lambda s=study, ph=phases[name]: search_trial(s, space, args.epochs, rng, ph))
                        for name, study in studies.items()}
            times = _common.interleave(variants, args.measure, warmup=0).wall
            medians = _common.report(f"search time per trial at {size} finished trials (ms)", times, unit="ms", scale=1000)
            results[size] = medians["journal file"]
            print("  by phase (median ms):")
            for name, by in phases.items():
                print(f"    {name:<40} " + ", ".join(f"{ph} {1000 * _common.median(v):.1f}" for ph, v in by.items()))
    trial_s = None if args.no_trial else small_trial_seconds(args.threads)
    for size, ms in results.items():
        share = f", {100 * ms / 1000 / trial_s:.2f}% of a {trial_s:.1f} s small trial" if trial_s else ""
        print(f"RESULT {size} trials: {ms:.1f} ms per trial on the journal file (target <= 60 ms at 1000){share}")


if __name__ == "__main__":
    main()
