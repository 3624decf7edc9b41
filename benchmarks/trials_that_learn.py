"""How many trials of a finished sweep learned: the issue-11 target is <= 10% at or below chance + 0.1.

    convsweep sweep dataset=digits tracking.run_dir=/tmp/d && python benchmarks/trials_that_learn.py /tmp/d convsweep-digits --classes 10

A trial's value is its last reported `search.metric` (a pruned trial's value when it stopped). Trials
that ended before training (collapsed feature map, over the compute budget) have no value; they are
counted apart, since they cost a trial slot but no training time.
"""

from __future__ import annotations

import argparse

import optuna

from convsweep.search.storage import resolve_locations
from convsweep.search.studies import ensure_study_exists


def last_value(trial: optuna.trial.FrozenTrial) -> float | None:
    if trial.values:
        return float(trial.values[0])
    if trial.intermediate_values:
        return float(trial.intermediate_values[max(trial.intermediate_values)])
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("study")
    parser.add_argument("--classes", type=int, required=True, help="chance = 1 / classes")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = ensure_study_exists(resolve_locations({"run_dir": args.run_dir}), args.study)
    chance = 1.0 / args.classes
    trials = [t for t in study.trials if t.state.is_finished()]
    values = {t.number: last_value(t) for t in trials}
    trained = [n for n, v in values.items() if v is not None]
    stuck = [n for n in trained if values[n] <= chance + 0.1]
    states = {s.name: sum(t.state == s for t in trials) for s in optuna.trial.TrialState if any(t.state == s for t in trials)}
    durations = [t.duration.total_seconds() for t in trials if t.duration]
    print(f"study {args.study}: {len(trials)} finished trials {states}; {len(trials) - len(trained)} ended before training")
    print(f"at or below chance + 0.1 ({chance + 0.1:.3f}): {len(stuck)} of {len(trained)} trained trials "
          f"= {len(stuck) / max(1, len(trained)):.0%} (trials {stuck}); of all finished: {len(stuck) / max(1, len(trials)):.0%}")
    print(f"best value {max(v for v in values.values() if v is not None):.4f}; trial seconds, sum {sum(durations):.0f}")
    for t in trials:
        value = values[t.number]
        print(f"  trial {t.number:3d} {t.state.name:8s} {'-' if value is None else f'{value:.4f}':>7s} "
              f"epochs {len(t.intermediate_values):3d}  {t.duration.total_seconds() if t.duration else 0:6.1f} s  "
              f"{t.user_attrs.get('baseline', '')}")


if __name__ == "__main__":
    main()
