"""Sweep-level and CNN views for a study, logged to MLflow; `convsweep report` regenerates them.

Runs at the end of every sweep and on demand. It only reads finished results (the study and
the logged models) and draws; a view that cannot be made is skipped with a note.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig
from rich.console import Console

from dashboards.cnn_views import log_cnn_views
from dashboards.leaderboard import leaderboard, leaderboard_table, ranked_trials
from dashboards.study_plots import log_study_plots
from lightning_modules.data import ImageData, load_dataset
from lightning_modules.errors import ConvsweepError


def log_sweep_views(study: optuna.Study, client: Any, parent_run_id: str, metric: str, data: ImageData,
                    top_k: int, console: Console) -> None:
    """Study plots on the parent run; filters, activations, confusion matrix, misclassified on the top-k trial runs."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="convsweep-views-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # optuna/matplotlib remarks on small studies; notes.txt has ours
        outcomes = log_study_plots(client, parent_run_id, study, metric, Path(tmp))
        skipped = [o.name for o in outcomes if o.skipped and not (o.name == "pareto_front" and len(study.directions) == 1)]
        if skipped:
            console.print(f"plots skipped (reasons in plots/notes.txt): {', '.join(skipped)}")
        for trial in ranked_trials(study, top_k):
            uri, run_id = trial.user_attrs.get("model_uri"), trial.user_attrs.get("mlflow_run_id")
            if not uri or not run_id:
                console.print(f"CNN views skipped for trial {trial.number}: no logged model (search.log_models=all logs every one)")
                continue
            model = mlflow.pytorch.load_model(uri, map_location="cpu")
            log_cnn_views(client, run_id, model, data, Path(tmp) / f"trial-{trial.number}")


def report(cfg: DictConfig, console: Console) -> int:
    """`convsweep report --study NAME`: regenerate the views on the study's runs and print the leaderboard."""
    from search.reproduce import trial_config
    from search.storage import init_mlflow, resolve_locations
    from search.sweep import ensure_study_exists

    loc = resolve_locations(cfg.tracking)
    study = ensure_study_exists(loc, str(cfg.search.study_name))
    metric = str(cfg.search.metric)
    parent = study.user_attrs.get("mlflow_parent_run_id")
    if not parent:
        raise ConvsweepError(f"study '{study.study_name}' has no MLflow parent run; was it made by `convsweep sweep`?")
    rows = leaderboard(study, metric, 10)
    console.print(leaderboard_table(rows, metric, f"leaderboard: {study.study_name}"))
    best = ranked_trials(study, 1)
    data = load_dataset(trial_config(best[0], cfg).dataset) if best else None
    client = init_mlflow(loc)
    if data is None:
        console.print("no completed trial yet: only the study plots that need none are drawn")
        with tempfile.TemporaryDirectory() as tmp:
            log_study_plots(client, parent, study, metric, Path(tmp))
    else:
        log_sweep_views(study, client, parent, metric, data, int(cfg.search.top_k_views), console)
    console.print(f"views logged to MLflow run {parent} (plots/) and the best trials' runs (cnn/)")
    return 0
