"""`convsweep reproduce`: re-run a trial from its stored config and seed, and compare every epoch."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from convsweep.errors import ConvsweepError
from convsweep.lightning_modules.data import load_dataset
from convsweep.search import run_records as rr
from convsweep.search.best import best_trials
from convsweep.search.environment import environment_diff, environment_record
from convsweep.search.readback import run_config
from convsweep.search.storage import init_mlflow, resolve_locations
from convsweep.search.studies import ensure_study_exists
from convsweep.search.train import train_and_track


def _get_run(client: Any, run_id: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        raise ConvsweepError(f"no MLflow run with id {run_id} in this store; list runs with `convsweep ui`") from None


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
    if run.data.tags.get(rr.ROLE) not in ("trial", "train"):
        raise ConvsweepError(f"run {run_id} is not a trial (its role is {run.data.tags.get(rr.ROLE, 'unknown')}); "
                             "give the run id of a trial (a child run of a sweep)")
    rcfg = run_config(client, run_id, cfg)
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
    rr.log_batch(new.client, new.run_id, metrics={"reproduce/max_abs_diff": worst if worst != float("inf") else -1.0},
                       tags={"convsweep.reproduce_match": str(worst <= tolerance)})
    if worst <= tolerance:
        console.print(f"[green]reproduced[/]: every epoch's {metric} within {tolerance:g} (max |diff| {worst:.2e})")
        return 0
    console.print(f"[red]not reproduced[/]: max |diff| {worst:.2e} > tolerance {tolerance:g}")
    return 1
