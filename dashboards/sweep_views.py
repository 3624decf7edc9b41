"""Sweep-level and CNN views for a study, logged to MLflow.

Runs at the end of every sweep and from `convsweep report`. It only reads finished results
(the study and the logged models) and draws; a view that cannot be made is skipped with a note.
A model URI comes from the study, which anyone with access to a shared storage can write, so
models are read as data (`load_logged_net`: weights and spec), never unpickled.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any

import optuna
from rich.console import Console

from convsweep.dashboards.cnn_views import log_cnn_views
from convsweep.dashboards.leaderboard import ranked_trials, trial_model_uri
from convsweep.dashboards.study_plots import log_study_plots
from convsweep.lightning_modules.data import ImageData
from convsweep.lightning_modules.saved_model import load_logged_net


def log_sweep_views(study: optuna.Study, client: Any, parent_run_id: str, metric: str, data: ImageData | None,
                    top_k: int, console: Console) -> None:
    """Study plots on the parent run; filters, activations, confusion matrix, misclassified on the top-k trial runs.

    With `data=None` (no completed trial to load it from) only the study plots are drawn.
    """
    import mlflow

    with tempfile.TemporaryDirectory(prefix="convsweep-views-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # optuna/matplotlib remarks on small studies; notes.txt has ours
        outcomes = log_study_plots(client, parent_run_id, study, metric, Path(tmp))
        expected = {"pareto_front"} if len(study.directions) == 1 else set()  # a single objective has no front
        skipped = [o.name for o in outcomes if o.skipped and o.name not in expected]
        if skipped:
            console.print(f"plots skipped (reasons in plots/notes.txt): {', '.join(skipped)}")
        for trial in ranked_trials(study, top_k) if data is not None else ():
            uri, run_id = trial_model_uri(client, trial), trial.user_attrs.get("mlflow_run_id")
            if not uri or not run_id:
                console.print(f"CNN views skipped for trial {trial.number}: no logged model "
                              "(search.log_models=all logs every one)")
                continue
            folder = Path(tmp) / f"trial-{trial.number}"
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(folder / "model"))
            model = load_logged_net(local)
            log_cnn_views(client, run_id, model, data, folder)
