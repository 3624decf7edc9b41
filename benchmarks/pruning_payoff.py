"""python benchmarks/pruning_payoff.py [--epoch-budget 36] [--seeds 0 1 2] [--datasets shapes digits] [overrides]

Claim: with the same total budget of training epochs, TPE + hyperband reaches the best val/acc
that TPE without pruning reaches with its whole budget using at most 50% of the epochs.

Three arms run as real sweeps (prepare_sweep -> open_study -> make_objective, the objective a
sweep runs, MLflow included) on each dataset and seed:
  tpe+hyperband   sampler=tpe pruner=hyperband
  tpe             sampler=tpe pruner=none
  random          sampler=random pruner=none
and, with --arms, tpe+sha (pruner=successive_halving: one bracket, so TPE sees every trial) and
tpe+median (pruner=median, the sweep's default).
Each study runs trials until the epochs its trials trained add up to --epoch-budget (a pruned
trial counts the epochs it trained, an architecture refused before training counts 0). The
best val/acc of the study's completed trials is traced against the epochs consumed; a trial
that would end past the budget does not count. Prints, per dataset, each arm's best at the
budget (mean over seeds) and the share of the budget hyperband needed to reach the no-pruning
arm's best (per seed, paired by seed; and on the mean curves), then draws the curves to
benchmarks/out/pruning_payoff.png with the raw traces in benchmarks/out/pruning_payoff.json.

Trailing arguments are Hydra overrides for every arm (e.g. search_space=wide); --hyperband adds
overrides to the hyperband arm only (e.g. --hyperband pruner.min_resource=2). Trials train
--max-epochs epochs of at most --limit-train-batches optimizer steps. Each study runs in a worker
process, replaced (and the study retried once) if it crashes.
"""

from __future__ import annotations

import faulthandler
import json
import multiprocessing
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path

import _common
import optuna
from omegaconf import OmegaConf

from convsweep.search.compose import compose_config
from convsweep.search.objective import make_objective
from convsweep.search.parent_run import open_sweep_run
from convsweep.search.preflight import prepare_sweep
from convsweep.search.studies import open_study
from convsweep.search.workers import TRIAL_ERRORS

ARMS = {"tpe+hyperband": ["sampler=tpe", "pruner=hyperband"], "tpe": ["sampler=tpe", "pruner=none"],
        "random": ["sampler=random", "pruner=none"],
        # optional (--arms): successive halving is one bracket (TPE sees every trial); median is the sweep's default
        "tpe+sha": ["sampler=tpe", "pruner=successive_halving"], "tpe+median": ["sampler=tpe", "pruner=median"]}
DEFAULT_ARMS = ["tpe+hyperband", "tpe", "random"]
BASELINE, PRUNED_ARMS = "tpe", ("tpe+hyperband", "tpe+sha", "tpe+median")
OUT = _common.ROOT / "benchmarks" / "out"


@dataclass
class Trace:
    """One study: after each finished trial, the epochs consumed so far and the best completed val/acc."""

    dataset: str
    arm: str
    seed: int
    epochs: list[int] = field(default_factory=list)  # cumulative training epochs after each trial
    best: list[float | None] = field(default_factory=list)  # best completed val/acc so far (None: none yet)
    states: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    cpu_s: float = 0.0  # this study's process CPU time: the work, without the waits of a loaded machine

    def best_at(self, budget: int) -> float | None:
        """The best val/acc of the trials that ended within `budget` epochs."""
        within = [b for e, b in zip(self.epochs, self.best) if e <= budget and b is not None]
        return within[-1] if within else None

    def epochs_to_reach(self, target: float) -> int | None:
        """The epochs consumed when the best first reached `target` (None: never)."""
        return next((e for e, b in zip(self.epochs, self.best) if b is not None and b >= target), None)


def run_study(dataset: str, arm: str, seed: int, budget: int, overrides: list[str], space: dict, run_dir: Path,
              attempt: int = 1) -> Trace:
    """One arm's sweep on one dataset and seed, stopped once its trials trained `budget` epochs.

    `overrides` come after the arm's own sampler and pruner choice; `space` is the search space
    read once at the start, so every study searches the same one even if conf/ changes meanwhile.
    A retry (`attempt` 2) starts a new study rather than resuming the crashed one (whose sampler
    seed would then differ).
    """
    faulthandler.enable()  # a crash inside torch still shows where it happened
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    cfg = compose_config([f"dataset={dataset}", *ARMS[arm], f"search.seed={seed}", f"search.study_name={dataset}-{arm}-s{seed}-a{attempt}",
                          "search.log_models=none", f"tracking.run_dir={run_dir}", *overrides])
    cfg.search_space = OmegaConf.create(space)
    plan = prepare_sweep(cfg)
    study = open_study(plan)
    open_sweep_run(plan, study)
    trace = Trace(dataset, arm, seed)
    consumed = 0

    def account(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal consumed
        consumed += len(trial.intermediate_values)  # one report per trained epoch, also with pruner=none
        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        trace.epochs.append(consumed)
        trace.best.append(max((t.value for t in done), default=None))
        trace.states.append(trial.state.name)
        if consumed >= budget:
            study.stop()

    start, cpu = time.perf_counter(), time.process_time()
    try:
        study.optimize(make_objective(plan), catch=TRIAL_ERRORS, callbacks=[account], gc_after_trial=False)
    finally:
        plan.client.set_terminated(plan.parent_run_id)
    trace.wall_s, trace.cpu_s = time.perf_counter() - start, time.process_time() - cpu
    return trace


class StudyRunner:
    """Runs each study in a worker process, so that a crash inside torch ends one study, not the benchmark:
    the worker is replaced and the study tried once more; a second crash leaves it out (reported)."""

    def __init__(self) -> None:
        self.pool = self._new_pool()

    @staticmethod
    def _new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))

    def run(self, dataset: str, arm: str, seed: int, budget: int, overrides: list[str], space: dict,
            run_dir: Path) -> Trace | None:
        for attempt in (1, 2):
            try:
                return self.pool.submit(run_study, dataset, arm, seed, budget, overrides, space, run_dir, attempt).result()
            except BrokenProcessPool:
                print(f"  {dataset:<7} {arm:<14} seed {seed}: the worker process crashed (attempt {attempt}; "
                      "its stack is above)", flush=True)
                self.pool = self._new_pool()
        return None

    def close(self) -> None:
        self.pool.shutdown()


def _mean_curve(traces: list[Trace], grid: list[int]) -> list[float | None]:
    """Mean over seeds of the best at each epoch count (None until every seed has a completed trial)."""
    out = []
    for e in grid:
        values = [t.best_at(e) for t in traces]
        out.append(statistics.fmean(values) if all(v is not None for v in values) else None)
    return out


def pct(values: list[float | None]) -> str:
    """Shares of the budget as percentages; None (never reached) as "never"."""
    return " ".join("never" if v is None else f"{v:.0%}" for v in values)


def summarize(traces: list[Trace], budget: int) -> dict[str, dict]:
    """Per dataset: each arm's best at the budget, and the share of it hyperband needed to match no pruning."""
    grid = list(range(budget + 1))
    out: dict[str, dict] = {}
    for dataset in dict.fromkeys(t.dataset for t in traces):
        by_arm = {arm: [t for t in traces if t.dataset == dataset and t.arm == arm] for arm in ARMS}
        by_arm = {arm: ts for arm, ts in by_arm.items() if ts}
        print(f"\n{dataset}: best val/acc within {budget} epochs (mean over seeds; per seed)")
        print(f"  {'arm':<15} {'mean':>7} {'per seed':<24} {'trials':>7} {'pruned':>7} {'wall s':>7} {'cpu s':>7}")
        row = {}
        for arm, ts in by_arm.items():
            finals = [t.best_at(budget) for t in ts]
            mean = statistics.fmean(f for f in finals if f is not None) if any(f is not None for f in finals) else None
            trials = statistics.fmean(len(t.states) for t in ts)
            pruned = statistics.fmean(t.states.count("PRUNED") for t in ts)
            wall, cpu = statistics.fmean(t.wall_s for t in ts), statistics.fmean(t.cpu_s for t in ts)
            seeds = " ".join("-" if f is None else f"{f:.3f}" for f in finals)
            print(f"  {arm:<15} {'-' if mean is None else f'{mean:.4f}':>7} {seeds:<24} {trials:>7.1f} {pruned:>7.1f} {wall:>7.1f} {cpu:>7.1f}")
            row[arm] = {"best_mean": mean, "best_per_seed": finals, "trials": trials, "pruned": pruned, "wall_s": wall, "cpu_s": cpu,
                        "mean_curve": _mean_curve(ts, grid)}
        for pruned_arm in (a for a in PRUNED_ARMS if a in by_arm and BASELINE in by_arm):
            shares, own = [], []
            pruned_by_seed = {t.seed: t for t in by_arm[pruned_arm]}
            for base in (b for b in by_arm[BASELINE] if b.seed in pruned_by_seed):  # paired by seed
                target = base.best_at(budget)
                reached = pruned_by_seed[base.seed].epochs_to_reach(target) if target is not None else None
                shares.append(None if reached is None or reached > budget else reached / budget)
                own.append(None if target is None else base.epochs_to_reach(target) / budget)
            target = row[BASELINE]["mean_curve"][-1]
            curve = row[pruned_arm]["mean_curve"]
            on_mean = next((e / budget for e, v in zip(grid, curve) if v is not None and target is not None and v >= target), None)
            print(f"  {pruned_arm} reaches {BASELINE}'s best at: {pct(shares)} of the budget (per seed); "
                  f"{'never' if on_mean is None else f'{on_mean:.0%}'} on the mean curves (target <= 50%); "
                  f"{BASELINE} itself first reached it at {pct(own)}")
            row[f"{pruned_arm}_share_to_match"] = {"per_seed": shares, "mean_curves": on_mean, "baseline_own": own}
        out[dataset] = row
    return out


def plot(summary: dict[str, dict], traces: list[Trace], budget: int, path: Path) -> None:
    """Best val/acc against epochs consumed: thick lines the mean over seeds, thin lines each seed."""
    from matplotlib import pyplot as plt

    datasets = list(summary)
    fig, axes = plt.subplots(1, len(datasets), figsize=(6 * len(datasets), 4.5), squeeze=False)
    colours = dict(zip(ARMS, ("tab:red", "tab:blue", "tab:grey", "tab:orange", "tab:green")))
    for ax, dataset in zip(axes[0], datasets):
        for arm, colour in colours.items():
            for t in (t for t in traces if t.dataset == dataset and t.arm == arm):
                ax.step(t.epochs, [float("nan") if b is None else b for b in t.best], where="post", color=colour,
                        alpha=0.25, linewidth=0.8)
            if arm in summary[dataset]:
                curve = summary[dataset][arm]["mean_curve"]
                ax.plot(range(budget + 1), [float("nan") if v is None else v for v in curve], color=colour,
                        linewidth=2.2, label=arm)
        ax.set(title=dataset, xlabel="training epochs consumed (all trials)", ylabel="best val/acc so far", xlim=(0, budget))
        ax.axvline(budget / 2, color="black", linestyle=":", linewidth=0.8)
        ax.legend(loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    p = _common.parser(__doc__)
    p.add_argument("--datasets", nargs="+", default=["shapes", "digits"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--arms", nargs="+", default=DEFAULT_ARMS, choices=list(ARMS))
    p.add_argument("--epoch-budget", type=int, default=36, help="training epochs per study, all trials together")
    p.add_argument("--max-epochs", type=int, default=6, help="trainer.max_epochs: epochs of a trial that is not pruned")
    p.add_argument("--limit-train-batches", type=int, default=6, help="optimizer steps per epoch (0 = the whole split)")
    p.add_argument("--hyperband", nargs="*", default=[], metavar="OVERRIDE", help="overrides for the hyperband arm only")
    p.add_argument("--out", type=Path, default=OUT, help="folder for pruning_payoff.png and .json")
    p.add_argument("overrides", nargs="*", help="Hydra overrides for every arm")
    args = p.parse_args()
    _common.banner("benchmarks/pruning_payoff.py", args)
    overrides = [f"trainer.max_epochs={args.max_epochs}", "trainer.max_steps=null",
                 f"trainer.limit_train_batches={args.limit_train_batches or 'null'}", *args.overrides]
    space = OmegaConf.to_container(compose_config(overrides).search_space, resolve=True)
    traces: list[Trace] = []
    start = time.perf_counter()
    runner = StudyRunner()
    with tempfile.TemporaryDirectory(prefix="pruning-payoff-") as tmp:
        for seed in args.seeds:  # seeds outermost: a load spike on the shared cores hits every arm alike
            for dataset in args.datasets:
                for arm in args.arms:
                    extra = args.hyperband if arm == "tpe+hyperband" else []
                    trace = runner.run(dataset, arm, seed, args.epoch_budget, [*overrides, *extra], space, Path(tmp))
                    if trace is None:
                        continue
                    traces.append(trace)
                    print(f"  {dataset:<7} {arm:<14} seed {seed}: best {trace.best_at(args.epoch_budget)} in "
                          f"{len(trace.states)} trials ({trace.states.count('PRUNED')} pruned), {trace.wall_s:.0f} s "
                          f"(cpu {trace.cpu_s:.0f} s)",
                          flush=True)
    runner.close()
    print(f"\ntotal wall time {time.perf_counter() - start:.0f} s; machine: {_common.machine()}")
    summary = summarize(traces, args.epoch_budget)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(summary, traces, args.epoch_budget, args.out / "pruning_payoff.png")
    (args.out / "pruning_payoff.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "overrides": overrides, "search_space": space,
         "summary": summary,
         "traces": [asdict(t) for t in traces]}, indent=1))
    print(f"wrote {args.out / 'pruning_payoff.png'} and pruning_payoff.json")


if __name__ == "__main__":
    main()
