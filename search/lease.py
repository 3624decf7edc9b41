"""A running trial's lease: which process runs it (host, pid) and when it last proved it is alive.

Optuna's RDB storages keep a heartbeat of their own, but its journal file (our default) has
none: a trial whose process was killed stays RUNNING for ever. The lease, kept in the trial's
user attr `lease` and refreshed by a daemon thread, lets a later sweep or `convsweep recover`
tell a lost trial from a running one. On every storage the (host, pid) pair also finds a
trial lost on this machine at once, without waiting for a grace period.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import optuna

LEASE = "lease"  # user attr: {"host": str, "pid": int, "heartbeat": unix seconds}


def this_host() -> str:
    return socket.gethostname()


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (a zombie, killed but not yet reaped, is dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (macOS): os.kill said it exists
        return True


def owner_gone(trial: optuna.trial.FrozenTrial, now: float, grace_period: float, check_heartbeat: bool) -> bool:
    """Whether the process that runs this RUNNING trial is gone.

    Args:
        trial: a RUNNING trial.
        now: unix seconds.
        grace_period: seconds without a heartbeat after which the owner counts as gone.
        check_heartbeat: judge the lease's heartbeat (journal storage); False where Optuna's own
            heartbeat does that (RDB storages, `optuna.storages.fail_stale_trials`).

    Returns:
        True when the owner ran on this host and its pid is dead, or (with `check_heartbeat`) when
        its last heartbeat (or, before the first one, the trial's start) is older than `grace_period`.
    """
    lease: dict[str, Any] = trial.user_attrs.get(LEASE) or {}
    if lease.get("host") == this_host() and not pid_alive(int(lease["pid"])):
        return True
    if not check_heartbeat:
        return False
    started = trial.datetime_start.timestamp() if trial.datetime_start else now
    return now - float(lease.get("heartbeat", started)) > grace_period


class Lease:
    """`with Lease(trial, interval):` the trial is leased to this process until the block ends.

    The lease is written on entry and, when `interval` is given, refreshed every `interval`
    seconds by a daemon thread (the journal storage has no heartbeat of its own). With
    `rdb_heartbeat` each refresh also records the trial's Optuna heartbeat on an RDB storage:
    `study.optimize` beats for the trials it asks, a trial asked ahead (search/ask_ahead.py) beats here.
    """

    def __init__(self, trial: optuna.Trial, interval: float | None, rdb_heartbeat: bool = False) -> None:
        self.trial, self.interval = trial, interval
        self._rdb_trial_id: int | None = None
        if rdb_heartbeat:
            storage = trial.storage  # public: Optuna's own heartbeat thread calls the same `record_heartbeat`
            self._rdb_trial_id = storage.get_trial_id_from_study_id_trial_number(
                storage.get_study_id_from_name(trial.study.study_name), trial.number)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh, daemon=True, name=f"convsweep-lease-{trial.number}")

    def _write(self) -> None:
        if self._rdb_trial_id is not None:
            self.trial.storage.record_heartbeat(self._rdb_trial_id)
        self.trial.set_user_attr(LEASE, {"host": this_host(), "pid": os.getpid(), "heartbeat": time.time()})

    def _refresh(self) -> None:
        assert self.interval is not None
        while not self._stop.wait(self.interval):
            try:
                self._write()
            except optuna.exceptions.UpdateFinishedTrialError:  # ended (e.g. failed by a recovery): nothing to keep
                return
            except Exception:  # a storage hiccup: the next beat retries, and the grace period covers a few misses
                continue

    def __enter__(self) -> "Lease":
        self._write()
        if self.interval:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
