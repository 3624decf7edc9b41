"""`convsweep evaluate`: train the chosen config, then look at the held-out test split once."""

from __future__ import annotations

import json

import torch
from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from convsweep.errors import ConvsweepError
from convsweep.lightning_modules.data import load_dataset
from convsweep.lightning_modules.data.base import Split
from convsweep.lightning_modules.runner import evaluate_model
from convsweep.search import run_records as rr
from convsweep.search.best import best_trials
from convsweep.search.readback import trial_config
from convsweep.search.storage import init_mlflow, resolve_locations
from convsweep.search.studies import ensure_study_exists
from convsweep.search.train import train_and_track


def _train_plus_val(train: Split, val: Split) -> Split:
    if not (train.in_memory and val.in_memory):
        raise ConvsweepError("--train-on-val needs an in-memory dataset (this one streams from disk)")
    return Split(torch.cat([train.images, val.images]), torch.cat([train.labels, val.labels]))


def evaluate(cfg: DictConfig, from_study: bool, train_on_val: bool, register: str | None, console: Console) -> int:
    """`convsweep evaluate`: train the chosen config, then evaluate it once on the held-out test split."""
    loc = resolve_locations(cfg.tracking)
    parent = None
    source = "config file"
    if from_study:
        study = ensure_study_exists(loc, str(cfg.search.study_name))
        best = best_trials(study)[0]
        ecfg = trial_config(init_mlflow(loc), best, cfg)
        parent = study.user_attrs.get("mlflow_parent_run_id")
        source = f"trial {best.number} of study {study.study_name}"
    else:
        ecfg = cfg
    data = load_dataset(ecfg.dataset)
    train_split = _train_plus_val(data.train, data.val) if train_on_val else None
    run = train_and_track(ecfg, role="evaluation", data=data, run_name=f"evaluate-{ecfg.search.study_name}",
                          parent_run_id=parent, train_split=train_split, registered_name=register,
                          tags={rr.STUDY: str(ecfg.search.study_name), "convsweep.evaluates": source,
                                "convsweep.train_on_val": str(train_on_val)})
    result = evaluate_model(run.result.model, data.test, data.num_classes)
    per_class = dict(zip(data.class_names, result["per_class_acc"]))
    rr.log_batch(run.client, run.run_id, metrics={"test/acc": result["acc"], "test/loss": result["loss"],
                                                        **{f"test/acc_class/{k}": v for k, v in per_class.items()}})
    run.client.log_text(run.run_id, json.dumps({"test/acc": result["acc"], "per_class_acc": per_class,
                                                "confusion": result["confusion"].tolist(),
                                                "class_names": data.class_names}, indent=2), "test_metrics.json")
    table = Table(title=f"held-out test split ({len(data.test)} images): {source}")
    table.add_column("class")
    table.add_column("test acc", justify="right")
    for name, acc in per_class.items():
        table.add_row(name, f"{acc:.4f}")
    table.add_row("[bold]all[/]", f"[bold]{result['acc']:.4f}[/]")
    console.print(table)
    console.print(f"MLflow run {run.run_id}" + (f"; registered as models:/{register}/latest" if register else ""))
    return 0
