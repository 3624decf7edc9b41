"""python benchmarks/ask_ahead.py [--trials 1000] [--rounds 3] [--per-round 6] [--train-s 1.0] [overrides]

Claim (issue 12, item 3): with `search.ask_ahead`, the search work on a trial's critical path
is at most 30 ms per trial at 1,000 finished trials, against the sampler's 100-300 ms when
`study.optimize` asks and samples each trial between two trainings.

Both arms run the sweep's own code around a simulated training: the real lease
(search/lease.py), the default space's define-by-run `space.sample`, the configured TPE and
median pruner on a journal file holding the same 1,000 finished trials (filled by the random
sampler, as benchmarks/search_overhead.py does), `report` + `should_prune` every epoch, and the
tell. Arm "study.optimize" is `run_trials`' loop without ask-ahead (one `study.optimize(n_trials=1)`
per claimed trial); arm "ask-ahead" is `AskAheadLoop` (search/ask_ahead.py). Training is a
sleep of `--train-s` split over the epochs: like a GPU trial, whose host thread waits on the
device, it leaves the interpreter free (sleep releases the GIL).

Critical path per trial = the gap between one trial's last epoch and the next one's first
(tell, callbacks, then ask, lease and sample, or waiting for the trial asked ahead) plus the
in-trial time that is not training (report + should_prune). The first trial of each loop has
no trial before it to overlap and is left out of both arms. Rounds alternate the arms.
"""

from __future__ import annotations

import random
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import _common
import optuna
from omegaconf import OmegaConf
from optuna.storages.journal import JournalFileBackend, JournalStorage
from search_overhead import curve, make_study, search_trial

from convsweep.search.ask_ahead import AskAheadLoop
from convsweep.search.compose import compose_config
from convsweep.search.lease import Lease
from convsweep.search.objective import TrialSteps
from convsweep.search.space import parse_space
from convsweep.search.workers import TRIAL_ERRORS


class Timeline:
    """Each trial's first-epoch start, last-epoch end and slept seconds, as the simulated training sees them."""

    def __init__(self) -> None:
        self.rows: list[tuple[float, float, float]] = []

    def critical_ms(self) -> list[float]:
        """Per trial after the first: gap since the previous trial's end + in-trial time that is not training."""
        return [1000 * ((start - prev_end) + (end - start - slept))
                for (_, prev_end, _), (start, end, slept) in zip(self.rows, self.rows[1:])]


def trial_steps(space: Any, epochs: int, train_s: float, timeline: Timeline, rng: random.Random) -> TrialSteps:
    """The sweep's steps with the fit replaced by sleeps and a synthetic learning curve."""

    def run(trial: optuna.Trial, _sampled: Any) -> float:
        start, slept, value = time.perf_counter(), 0.0, 0.0
        try:
            for epoch in range(epochs):
                t0 = time.perf_counter()
                time.sleep(train_s / epochs)
                slept += time.perf_counter() - t0
                value = curve(trial, epoch, rng)
                trial.report(value, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch}")
            return value
        finally:
            timeline.rows.append((start, time.perf_counter(), slept))

    return TrialSteps(lambda trial: Lease(trial, 60.0), space.sample, run)


def optimize_arm(study: optuna.Study, steps: TrialSteps, n: int) -> None:
    """`run_trials` without ask-ahead: one study.optimize per claimed trial."""
    def objective(trial: optuna.Trial) -> float:
        with steps.lease(trial):
            return steps.run(trial, steps.sample(trial))

    for _ in range(n):
        study.optimize(objective, n_trials=1, catch=TRIAL_ERRORS, gc_after_trial=False)


def ask_ahead_arm(study: optuna.Study, steps: TrialSteps, n: int) -> None:
    left = [n]

    def claim() -> bool:
        left[0] -= 1
        return left[0] >= 0

    AskAheadLoop(study, steps, [], TRIAL_ERRORS).run(claim, lambda: None, lambda: False)


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--trials", type=int, default=1000, help="finished trials in the study before measuring")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--per-round", type=int, default=6, help="trials per arm per round (the first is not counted)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--train-s", type=float, default=1.0, help="simulated training seconds per trial")
    p.add_argument("overrides", nargs="*", help="Hydra overrides (sampler, pruner, search space)")
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    _common.banner("benchmarks/ask_ahead.py", args)
    cfg = compose_config(list(args.overrides))
    space = parse_space(OmegaConf.to_container(cfg.search_space), "search_space")
    print(f"# sampler: {OmegaConf.to_container(cfg.sampler)}; pruner: {OmegaConf.to_container(cfg.pruner)}")
    rng = random.Random(0)
    arms = {"study.optimize": optimize_arm, "ask-ahead": ask_ahead_arm}
    with tempfile.TemporaryDirectory() as tmp:
        filler = make_study(cfg, space, None, "fill", optuna.samplers.RandomSampler(seed=0))
        for _ in range(args.trials):
            search_trial(filler, space, args.epochs, rng)
        studies = {}
        for i, name in enumerate(arms):
            storage = JournalStorage(JournalFileBackend(str(Path(tmp) / f"journal-{i}.log")))
            studies[name] = make_study(cfg, space, storage, "bench")
            studies[name].add_trials(filler.get_trials(deepcopy=False))
        critical: dict[str, list[float]] = {name: [] for name in arms}
        cpu: dict[str, list[float]] = {name: [] for name in arms}
        for r in range(args.rounds):
            for name, arm in (arms.items() if r % 2 == 0 else reversed(list(arms.items()))):
                timeline = Timeline()
                steps = trial_steps(space, args.epochs, args.train_s, timeline, rng)
                before = cpu_s()
                arm(studies[name], steps, args.per_round)
                cpu[name].append(1000 * (cpu_s() - before) / args.per_round)
                critical[name].extend(timeline.critical_ms())
                print(f"  round {r + 1}/{args.rounds} {name:<15} critical path per trial (ms): "
                      + ", ".join(f"{v:.1f}" for v in timeline.critical_ms()))
    print(f"\n{_common.machine()}")
    print(f"search time on the critical path per trial at {args.trials} finished trials (ms), "
          f"{args.train_s:.1f} s simulated training per trial:")
    base = _common.median(critical["study.optimize"])
    for name in arms:
        values = critical[name]
        print(f"  {name:<15} median {_common.median(values):7.1f}  min {min(values):7.1f}  max {max(values):7.1f}  "
              f"n {len(values):3d}  {_common.median(values) / base:.3f}x   process CPU per trial "
              f"{_common.median(cpu[name]):.1f} ms (both threads)")
    ahead = _common.median(critical["ask-ahead"])
    print(f"RESULT ask-ahead: {ahead:.1f} ms on the critical path per trial at {args.trials} trials vs "
          f"{base:.1f} ms with study.optimize ({ahead / base:.2f}x; target <= 30 ms)")


if __name__ == "__main__":
    main()
