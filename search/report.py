"""`convsweep report --study NAME`: redraw a study's views in MLflow and print its leaderboard."""

from __future__ import annotations

from omegaconf import DictConfig
from rich.console import Console

from convsweep.dashboards.leaderboard import (failure_counts, failures_table, leaderboard, leaderboard_table,
                                               ranked_trials, state_counts)
from convsweep.dashboards.sweep_views import log_sweep_views
from convsweep.lightning_modules.data import load_dataset
from convsweep.errors import ConvsweepError
from convsweep.search.best import objective_names
from convsweep.search.readback import trial_config
from convsweep.search.storage import init_mlflow, resolve_locations
from convsweep.search.studies import ensure_study_exists


def report(cfg: DictConfig, console: Console) -> int:
    """`convsweep report --study NAME`: regenerate the views on the study's runs and print the leaderboard."""
    loc = resolve_locations(cfg.tracking)
    study = ensure_study_exists(loc, str(cfg.search.study_name))
    metric = objective_names(study, str(cfg.search.metric))[0]  # the study's own, not this command's config
    parent = study.user_attrs.get("mlflow_parent_run_id")
    if not parent:
        raise ConvsweepError(f"study '{study.study_name}' has no MLflow parent run; was it made by `convsweep sweep`?")
    rows = leaderboard(study, metric, 10)
    console.print(leaderboard_table(rows, metric, f"leaderboard: {study.study_name}", states=state_counts(study)))
    failures = failure_counts(study)
    if failures:
        console.print(failures_table(failures[:10], f"trials without a result: {study.study_name}"))
    best = ranked_trials(study, 1)
    client = init_mlflow(loc)
    data = load_dataset(trial_config(client, best[0], cfg).dataset) if best else None
    if data is None:
        console.print("no completed trial yet: only the study plots that need none are drawn")
    log_sweep_views(study, client, parent, metric, data, int(cfg.search.top_k_views), console)
    console.print(f"views logged to MLflow run {parent} (plots/) and the best trials' runs (cnn/)")
    return 0
