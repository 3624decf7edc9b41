"""From a finished sweep to a shippable model: `best`, `reproduce` and `evaluate`.

A config read back from the tracking store is data: it is merged onto the shipped schema
(unknown keys refused) and only ever instantiates the allow-listed builders.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import optuna
import torch
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from convsweep.lightning_modules.data import load_dataset
from convsweep.lightning_modules.data.base import Split
from convsweep.errors import ConvsweepError
from convsweep.lightning_modules.runner import evaluate_model
from convsweep.search import tracking
from convsweep.search.config import merge_onto_schema, to_yaml
from convsweep.search.environment import environment_diff, environment_record
from convsweep.search.storage import init_mlflow, resolve_locations
from convsweep.search.sweep import ensure_study_exists
from convsweep.search.train import train_and_track


def best_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """The best trial, or the Pareto set of a multi-objective study."""
    try:
        return list(study.best_trials) if len(study.directions) > 1 else [study.best_trial]
    except ValueError:
        raise ConvsweepError(f"study '{study.study_name}' has no completed trials yet; run `convsweep sweep` first") from None


def stored_trial_config(trial: optuna.trial.FrozenTrial, cfg: DictConfig) -> DictConfig:
    """A trial's stored config, checked against the schema, pointed at the current storage."""
    stored = trial.user_attrs.get("config")
    if not stored:
        raise ConvsweepError(f"trial {trial.number} has no stored config (it was not made by convsweep)")
    return _rebase(stored, cfg, f"trial {trial.number}")


def _rebase(stored: dict, cfg: DictConfig, source: str) -> DictConfig:
    data = dict(stored)
    data["tracking"] = OmegaConf.to_container(cfg.tracking)  # where this command reads and writes
    return merge_onto_schema(data, source=source)


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
    best_cfg = stored_trial_config(best, cfg)
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

        init_mlflow(loc)
        version = mlflow.register_model(uri, register)
        console.print(f"registered models:/{register}/{version.version} (load: mlflow.pytorch.load_model('models:/{register}/latest'))")
    return 0


def _get_run(client: Any, run_id: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        raise ConvsweepError(f"no MLflow run with id {run_id} in this store; list runs with `convsweep ui`") from None


def _stored_config(client: Any, run_id: str) -> dict:
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, "config.yaml", tmp)
        except (MlflowException, OSError):
            raise ConvsweepError(f"run {run_id} has no config.yaml artifact, so it cannot be re-run") from None
        return OmegaConf.to_container(OmegaConf.load(path))


def reproduce(cfg: DictConfig, run_id: str | None, tolerance: float, force: bool, console: Console) -> int:
    """`convsweep reproduce`: re-run a trial from its stored config and seed; compare per-epoch metrics.

    Returns 0 when every epoch's metric matches within `tolerance`, 1 otherwise.
    """
    loc = resolve_locations(cfg.tracking)
    client = init_mlflow(loc)
    if run_id is None:
        study = ensure_study_exists(loc, str(cfg.search.study_name))
        run_id = best_trials(study)[0].user_attrs.get("mlflow_run_id")
    run = _get_run(client, run_id)
    if run.data.tags.get(tracking.ROLE) not in ("trial", "train"):
        raise ConvsweepError(f"run {run_id} is not a trial (its role is {run.data.tags.get(tracking.ROLE, 'unknown')}); "
                             "give the run id of a trial (a child run of a sweep)")
    rcfg = _rebase(_stored_config(client, run_id), cfg, f"run {run_id}")
    metric = str(rcfg.search.metric)
    data = load_dataset(rcfg.dataset)
    recorded_fp = run.data.tags.get("data.fingerprint")
    if recorded_fp and recorded_fp != data.fingerprint:
        message = (f"dataset '{data.name}' changed since run {run_id} (fingerprint {recorded_fp[:12]} -> "
                   f"{data.fingerprint[:12]})")
        if not force:
            raise ConvsweepError(message + "; pass --force to reproduce anyway")
        console.print(f"[yellow]warning:[/] {message}")
    recorded_env = {k[len("env."):]: v for k, v in run.data.tags.items() if k.startswith("env.")}
    for line in environment_diff(recorded_env, environment_record()):
        console.print(f"[yellow]environment differs:[/] {line}")
    original = {int(m.step): m.value for m in client.get_metric_history(run_id, metric)}
    if not original:
        raise ConvsweepError(f"run {run_id} has no per-epoch {metric} to compare with")
    new = train_and_track(rcfg, role="reproduction", tags={"convsweep.reproduces": run_id}, log_model=False,
                          data=data, run_name=f"reproduce-{run.info.run_name}",
                          parent_run_id=run.data.tags.get("mlflow.parentRunId"))
    reproduced = {int(row["epoch"]): row[metric] for row in new.result.history if metric in row}
    table = Table(title=f"{metric}: original run {run_id[:8]} vs reproduction {new.run_id[:8]}")
    for col in ("epoch", "original", "reproduced", "|diff|"):
        table.add_column(col, justify="right")
    diffs = []
    for epoch in sorted(original):
        again = reproduced.get(epoch)
        diff = abs(again - original[epoch]) if again is not None else float("inf")
        diffs.append(diff)
        table.add_row(str(epoch), f"{original[epoch]:.6f}", "-" if again is None else f"{again:.6f}", f"{diff:.2e}")
    console.print(table)
    worst = max(diffs)
    tracking.log_batch(new.client, new.run_id, metrics={"reproduce/max_abs_diff": worst if worst != float("inf") else -1.0},
                       tags={"convsweep.reproduce_match": str(worst <= tolerance)})
    if worst <= tolerance:
        console.print(f"[green]reproduced[/]: every epoch's {metric} within {tolerance:g} (max |diff| {worst:.2e})")
        return 0
    console.print(f"[red]not reproduced[/]: max |diff| {worst:.2e} > tolerance {tolerance:g}")
    return 1


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
        ecfg = stored_trial_config(best, cfg)
        parent = study.user_attrs.get("mlflow_parent_run_id")
        source = f"trial {best.number} of study {study.study_name}"
    else:
        ecfg = cfg
    data = load_dataset(ecfg.dataset)
    train_split = _train_plus_val(data.train, data.val) if train_on_val else None
    run = train_and_track(ecfg, role="evaluation", data=data, run_name=f"evaluate-{ecfg.search.study_name}",
                          parent_run_id=parent, train_split=train_split, registered_name=register,
                          tags={tracking.STUDY: str(ecfg.search.study_name), "convsweep.evaluates": source,
                                "convsweep.train_on_val": str(train_on_val)})
    result = evaluate_model(run.result.model, data.test, data.num_classes)
    per_class = dict(zip(data.class_names, result["per_class_acc"]))
    tracking.log_batch(run.client, run.run_id, metrics={"test/acc": result["acc"], "test/loss": result["loss"],
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
