"""End every RUNNING trial whose worker is gone, in Optuna and in MLflow, with a true state and reason.

It runs when a sweep starts or resumes, when one of its local worker processes dies, when a
sweep is interrupted (its own trials end `interrupted`), and on its own as `convsweep recover`.
Who is gone: a lease (search/lease.py) on the journal file and for this host's processes on
any storage; Optuna's heartbeat (`fail_stale_trials`, with `lost_trial_callback` on the storage)
for other machines on RDB storages. A lost trial ends FAIL with the reason `worker lost`, its
MLflow run ends FAILED with the same tag, and with `search.retry_lost` its params are enqueued again.
"""

from __future__ import annotations

import time
import warnings
from typing import Any, Callable, Collection

import optuna
from omegaconf import DictConfig
from rich.console import Console

from convsweep.dashboards.leaderboard import WORKER_LOST, trial_reason
from convsweep.search import run_records as rr
from convsweep.search.lease import LEASE, owner_gone, this_host
from convsweep.search.run_records import INTERRUPTED

TrialState = optuna.trial.TrialState


def find_trial_run(client: Any, experiment_id: str | None, study_name: str, number: int) -> str | None:
    """A trial's MLflow run by its tags, for a trial killed before it recorded `mlflow_run_id`."""
    if experiment_id is None:
        return None
    runs = client.search_runs([experiment_id], max_results=1, filter_string=(
        f"tags.`{rr.ROLE}` = 'trial' and tags.`{rr.STUDY}` = '{study_name}' and tags.`{rr.TRIAL}` = '{number}'"))
    return runs[0].info.run_id if runs else None


def _after_end(client: Any, study: optuna.Study, trial: optuna.trial.FrozenTrial, run_id: str | None, reason: str,
               retry: bool) -> None:
    """The MLflow side of a trial ended from outside its worker, and the retry."""
    if run_id:
        rr.finish_run(client, run_id, "FAIL", tags={rr.REASON: reason})
    if retry and trial.params:
        study.enqueue_trial(dict(trial.params), user_attrs={"retry_of": trial.number})


def lost_trial_callback(client: Any, experiment_id: Callable[[], str | None], retry: bool
                        ) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """For `RDBStorage(heartbeat_stale_trial_callback=...)`: Optuna failed a trial whose heartbeat stopped.

    `experiment_id()` is asked when a trial is lost: the storage is opened before the sweep's
    parent run (and so its experiment) is known.
    """

    def on_lost(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        run_id = trial.user_attrs.get("mlflow_run_id") or find_trial_run(client, experiment_id(), study.study_name,
                                                                         trial.number)
        _after_end(client, study, trial, run_id, WORKER_LOST, retry)

    return on_lost


def end_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial, client: Any, experiment_id: str | None,
              reason: str, retry: bool) -> bool:
    """FAIL one RUNNING trial from outside its worker; False when it ended meanwhile (another recovery won).

    The reason goes in first: a finished trial's attrs can no longer change. The storage's own
    state change decides the race between two recovering processes, as in Optuna's `fail_stale_trials`.
    """
    storage = study._storage
    run_id = trial.user_attrs.get("mlflow_run_id") or find_trial_run(client, experiment_id, study.study_name, trial.number)
    try:
        storage.set_trial_user_attr(trial._trial_id, "reason", reason)
        if run_id and "mlflow_run_id" not in trial.user_attrs:
            storage.set_trial_user_attr(trial._trial_id, "mlflow_run_id", run_id)
        storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    _after_end(client, study, trial, run_id, reason, retry)
    return True


def close_orphan_runs(study: optuna.Study, client: Any, experiment_id: str | None) -> None:
    """End the RUNNING MLflow runs of trials that are over, with the trial's state and reason.

    They come from a trial failed by Optuna's heartbeat in a process without the callback, or
    from a worker killed between the end of its run and Optuna's record of it.
    """
    if experiment_id is None:
        return
    runs = client.search_runs([experiment_id], max_results=1000, filter_string=(
        f"tags.`{rr.ROLE}` = 'trial' and tags.`{rr.STUDY}` = '{study.study_name}' and attributes.status = 'RUNNING'"))
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    for run in runs:
        number = run.data.tags.get(rr.TRIAL)
        trial = trials.get(int(number)) if number is not None else None
        if trial is not None and trial.state.is_finished():
            reason = trial_reason(trial)
            rr.finish_run(client, run.info.run_id, trial.state.name, tags={rr.REASON: reason} if reason else None)


def recover(study: optuna.Study, client: Any, experiment_id: str | None, *, grace_period: float, retry: bool,
            journal: bool, ended_pids: Collection[int] = (), reason: str = INTERRUPTED) -> list[int]:
    """End the study's RUNNING trials whose owner is gone; returns the numbers of those this call ended.

    Args:
        study: the study (its storage carries `lost_trial_callback` on RDB storages).
        client: MlflowClient of the study's store.
        experiment_id: the study's MLflow experiment (None: no runs to close).
        grace_period: seconds without a lease heartbeat after which a journal trial is lost.
        retry: enqueue the params of each lost trial again (`search.retry_lost`).
        journal: the storage is a journal file (no Optuna heartbeat: the lease decides alone).
        ended_pids: this host's processes known to be over (an interrupted sweep's own): their
            trials end with `reason` and are not retried.
        reason: the reason for the trials of `ended_pids`.
    """
    ended, now, host = [], time.time(), this_host()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        lease = trial.user_attrs.get(LEASE) or {}
        ours = lease.get("host") == host and lease.get("pid") in ended_pids
        if ours or owner_gone(trial, now, grace_period, check_heartbeat=journal):
            if end_trial(study, trial, client, experiment_id, reason if ours else WORKER_LOST, retry and not ours):
                ended.append(trial.number)
    if not journal:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)  # other machines' trials; the storage's callback ends their runs
    close_orphan_runs(study, client, experiment_id)
    return ended


def lost_trials_of(study: optuna.Study, pid: int) -> int:
    """How many trials of this host's process `pid` ended lost (by a recovery or by Optuna's heartbeat):
    what a dead local worker gives back to its sweep's budget."""
    host = this_host()
    return sum((t.user_attrs.get(LEASE) or {}).get("pid") == pid and t.user_attrs[LEASE].get("host") == host
               and trial_reason(t) == WORKER_LOST for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)))


def recover_command(cfg: DictConfig, console: Console) -> int:
    """convsweep recover --study NAME: end the study's lost trials now, as a sweep's start would."""
    from convsweep.search.storage import experiment_id, init_mlflow, open_optuna_storage, resolve_locations
    from convsweep.search.studies import ensure_study_exists

    loc = resolve_locations(cfg.tracking)
    name = str(cfg.search.study_name)
    study = ensure_study_exists(loc, name)  # one line naming the known studies when there is no such study
    client = init_mlflow(loc)
    exp_id = experiment_id(client, str(cfg.tracking.experiment_name), loc, create=False)
    retry = bool(cfg.search.retry_lost)
    if not loc.is_journal:  # again, with the heartbeat settings and the callback that ends the runs
        storage = open_optuna_storage(loc, create=False, heartbeat_interval=int(cfg.search.heartbeat_interval),
                                      grace_period=int(cfg.search.grace_period),
                                      stale_trial_callback=lost_trial_callback(client, lambda: exp_id, retry))
        study = optuna.load_study(study_name=name, storage=storage)
    before = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    recover(study, client, exp_id, grace_period=float(cfg.search.grace_period), retry=retry, journal=loc.is_journal)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    ended = sorted(n for n in before if trials[n].state.is_finished())
    for n in ended:
        console.print(f"trial {n}: {trials[n].state.name} ({trial_reason(trials[n])})")
    still = sorted(n for n in before if not trials[n].state.is_finished())
    parent = study.user_attrs.get("mlflow_parent_run_id")
    if parent and not any(t.state == TrialState.RUNNING for t in trials.values()) \
            and client.get_run(parent).info.status == "RUNNING":
        # no trial runs, so no sweep of the study is alive (one between two trials sets its own status at its end)
        client.set_terminated(parent, status="KILLED")
        console.print(f"parent run {parent} ended KILLED: its sweep is gone")
    console.print(f"study {name}: {len(ended)} lost trial(s) ended"
                  + (", their params enqueued again" if retry and ended else "")
                  + (f"; {len(still)} still running with a live worker: {', '.join(map(str, still))}" if still else ""))
    return 0
