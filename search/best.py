"""`convsweep best`: print a study's best trial (or Pareto set) and write it as a standalone config.

A multi-objective study has no single best trial: `--pick RULE` chooses one from its Pareto
front (by default, the one with the best metric), and that one is written and registered.
"""

from __future__ import annotations

from pathlib import Path

import optuna
from omegaconf import DictConfig
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.table import Table

from convsweep.dashboards.leaderboard import failure_counts, format_cost, trial_model_uri
from convsweep.errors import ConvsweepError
from convsweep.search.masking import to_yaml
from convsweep.search.readback import trial_config
from convsweep.search.storage import init_mlflow, resolve_locations
from convsweep.search.studies import ensure_study_exists


PICK_RULES = "best:NAME or smallest-within:TOL[:NAME], e.g. --pick smallest-within:0.005"


def best_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The best trial, or the Pareto set of a multi-objective study, best first by the metric (the first objective)."""
    try:
        trials = [study.best_trial] if len(study.directions) == 1 else list(study.best_trials)
    except ValueError:
        trials = []
    if not trials:
        raise ConvsweepError(f"study '{study.study_name}' has no completed trials yet; run `convsweep sweep` first")
    sign = -1.0 if study.directions[0] == StudyDirection.MAXIMIZE else 1.0
    return sorted(trials, key=lambda t: sign * t.values[0])


def objective_names(study: optuna.Study, metric: str) -> list[str]:
    """The names of a study's values; studies made before convsweep named them have only the metric's."""
    return study.metric_names or [metric] + [f"objective{i}" for i in range(1, len(study.directions))]


def pick_trial(front: list[FrozenTrial], names: list[str], directions: list[StudyDirection], rule: str) -> FrozenTrial:
    """Choose one trial of a Pareto front by a rule.

    Rules:
        best:NAME: the best value of objective NAME (e.g. best:val/acc, best:model/params).
        smallest-within:TOL[:NAME]: the lowest NAME (default: the second objective) among the
            trials whose metric (the first objective) is within TOL of the best metric, relative
            to it: 0.005 = within 0.5%. The smallest net that is good enough.

    Args:
        front: the candidates, e.g. `best_trials(study)`.
        names: the objective names, in the order of each trial's `values`.
        directions: the study's directions, in the same order.
        rule: as above.
    """
    kind, _, arg = rule.partition(":")

    def column(name: str) -> tuple[int, float]:
        """(index of objective `name`, sign that makes lower better)."""
        if name not in names:
            raise ConvsweepError(f"--pick {rule}: '{name}' is not an objective of this study; its objectives: {', '.join(names)}")
        i = names.index(name)
        return i, -1.0 if directions[i] == StudyDirection.MAXIMIZE else 1.0

    if kind == "best" and arg:
        i, sign = column(arg)
        return min(front, key=lambda t: sign * t.values[i])
    if kind == "smallest-within" and arg:
        tol, _, name = arg.partition(":")
        try:
            tolerance = float(tol)
        except ValueError:
            tolerance = -1.0
        if not tolerance >= 0:
            raise ConvsweepError(f"--pick {rule}: the tolerance must be a number >= 0 (a fraction: 0.005 = 0.5%)")
        if not name and len(names) < 2:
            raise ConvsweepError(f"--pick {rule} needs a multi-objective study (search.objectives) or a NAME")
        i, sign = column(name or names[1])
        metric_sign = column(names[0])[1]
        best = min(metric_sign * t.values[0] for t in front) * metric_sign
        near = [t for t in front if abs(t.values[0] - best) <= tolerance * abs(best) + 1e-12]
        return min(near, key=lambda t: (sign * t.values[i], metric_sign * t.values[0]))
    raise ConvsweepError(f"unknown --pick rule '{rule}'; use {PICK_RULES}")


def print_failures(study: optuna.Study, console: Console, top: int = 3) -> None:
    """One line: how many trials failed and their most common reasons (nothing when none failed)."""
    failed = failure_counts(study, states=(TrialState.FAIL,))
    if failed:
        console.print(f"{sum(r['trials'] for r in failed)} failed trial(s) in study {study.study_name}; most common reasons: "
                      + "; ".join(f"{r['reason']} (x{r['trials']})" for r in failed[:top]))


def _cell(name: str, value: float) -> str:
    return format_cost(value) if name.startswith("model/") else f"{value:.4f}"


def export_best(cfg: DictConfig, output: str, register: str | None, console: Console, pick: str | None = None) -> int:
    """`convsweep best [--pick RULE]`: print the best trial (or Pareto set), write the chosen one as a standalone config."""
    loc = resolve_locations(cfg.tracking)
    study = ensure_study_exists(loc, str(cfg.search.study_name))
    print_failures(study, console)
    trials = best_trials(study)
    names = objective_names(study, str(cfg.search.metric))
    best = pick_trial(trials, names, study.directions, pick) if pick else trials[0]
    table = Table(title=f"best of study {study.study_name}" if len(names) == 1 else
                  f"Pareto set of {study.study_name}: {len(trials)} trials (* = written to {Path(output).name})")
    for col in ("trial", *names, "param", "value"):
        table.add_column(col)
    for t in trials:
        for i, (k, v) in enumerate(sorted(t.params.items())):
            head = [f"{t.number}{' *' if t.number == best.number and len(trials) > 1 else ''}",
                    *map(_cell, names, t.values)]
            table.add_row(*(head if i == 0 else [""] * len(head)), k, f"{v:.4g}" if isinstance(v, float) else str(v))
    console.print(table)
    client = init_mlflow(loc)
    best_cfg = trial_config(client, best, cfg)
    values = ", ".join(f"{n} = {_cell(n, v)}" for n, v in zip(names, best.values))
    chosen = f" (picked from the Pareto front by {pick or f'best:{names[0]}'})" if len(names) > 1 else ""
    header = (f"# Best trial {best.number} of study '{study.study_name}'{chosen}: {values}\n"
              f"# MLflow run {best.user_attrs.get('mlflow_run_id')}. Standalone: no search space is needed.\n"
              f"# Run it with: convsweep train --config-file {Path(output).name}\n"
              "# Tracking URIs with a password are left out: they come from tracking.* or CONVSWEEP_* at run time.\n")
    Path(output).write_text(header + to_yaml(best_cfg, omit_secrets=True))
    console.print(f"wrote {output}; train it with: convsweep train --config-file {output}")
    if register:
        uri = trial_model_uri(client, best)
        if not uri:
            raise ConvsweepError(f"trial {best.number} has no logged model (search.log_models=none?); "
                                 f"use `convsweep evaluate --study {study.study_name} --register {register}`")
        import mlflow

        version = mlflow.register_model(uri, register)
        console.print(f"registered models:/{register}/{version.version} "
                      f"(load: mlflow.pyfunc.load_model('models:/{register}/latest').predict(uint8_images))")
    return 0
