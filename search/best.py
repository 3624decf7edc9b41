"""`convsweep best`: print a study's best trial (or Pareto set) and write it as a standalone config."""

from __future__ import annotations

from pathlib import Path

import optuna
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from convsweep.errors import ConvsweepError
from convsweep.search.masking import to_yaml
from convsweep.search.readback import trial_config
from convsweep.search.storage import init_mlflow, resolve_locations
from convsweep.search.studies import ensure_study_exists


def best_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The best trial, or the Pareto set of a multi-objective study."""
    try:
        return list(study.best_trials) if len(study.directions) > 1 else [study.best_trial]
    except ValueError:
        raise ConvsweepError(f"study '{study.study_name}' has no completed trials yet; run `convsweep sweep` first") from None


def export_best(cfg: DictConfig, output: str, register: str | None, console: Console) -> int:
    """`convsweep best`: print the best trial (or Pareto set) and write it as a standalone config."""
    loc = resolve_locations(cfg.tracking)
    study = ensure_study_exists(loc, str(cfg.search.study_name))
    trials = best_trials(study)
    table = Table(title=f"best of study {study.study_name}" if len(trials) == 1 else f"Pareto set of {study.study_name}")
    for col in ("trial", str(cfg.search.metric), "param", "value"):
        table.add_column(col)
    for t in trials:
        for i, (k, v) in enumerate(sorted(t.params.items())):
            table.add_row(str(t.number) if i == 0 else "", f"{t.values}" if i == 0 else "", k,
                          f"{v:.4g}" if isinstance(v, float) else str(v))
    console.print(table)
    best = trials[0]
    client = init_mlflow(loc)
    best_cfg = trial_config(client, best, cfg)
    header = (f"# Best trial {best.number} of study '{study.study_name}': {cfg.search.metric} = {best.values}\n"
              f"# MLflow run {best.user_attrs.get('mlflow_run_id')}. Standalone: no search space is needed.\n"
              f"# Run it with: convsweep train --config-file {Path(output).name}\n")
    Path(output).write_text(header + to_yaml(best_cfg))
    console.print(f"wrote {output}; train it with: convsweep train --config-file {output}")
    if register:
        uri = best.user_attrs.get("model_uri")
        if not uri:
            raise ConvsweepError(f"trial {best.number} has no logged model (search.log_models=none?); "
                                 f"use `convsweep evaluate --study {study.study_name} --register {register}`")
        import mlflow

        version = mlflow.register_model(uri, register)
        console.print(f"registered models:/{register}/{version.version} (load: mlflow.pytorch.load_model('models:/{register}/latest'))")
    return 0
