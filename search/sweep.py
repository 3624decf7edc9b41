"""`run_sweep`: run a planned sweep (see `preflight.prepare_sweep`) with its workers and live view.

One MLflow experiment per study, a parent run per study (reopened when the same study
resumes), N worker processes sharing the study storage, the live view, and the sweep-level
pictures at the end. Each step lives in its own module: `samplers`, `studies`, `recovery`,
`workers`, `parent_run`, `live_view`, `summary`.

The record stays true on every path: lost trials of earlier sweeps are ended first, a worker
that dies has its trial ended and given back to the budget, and the parent run ends
FINISHED, FAILED (a worker crashed, or no trial completed and some failed) or KILLED (Ctrl-C,
SIGTERM), with its `best.*` tags computed from the study.
"""

from __future__ import annotations

import os
import time

import optuna
from rich.console import Console
from rich.live import Live

from convsweep.search.baselines import enqueue_baselines
from convsweep.search.live_view import Poller, SweepProgress
from convsweep.search.parent_run import open_sweep_run, record_best
from convsweep.search.preflight import SweepPlan
from convsweep.search.recovery import lost_trials_of, recover
from convsweep.search.run_records import INTERRUPTED
from convsweep.search.studies import open_study
from convsweep.search.summary import SweepSummary, summarize
from convsweep.search.interrupts import ignore_signals, interrupt_on_signals
from convsweep.search.workers import Budget, WorkerPool, run_trials


def _recover(plan: SweepPlan, study: optuna.Study, **kwargs: object) -> list[int]:
    search = plan.cfg.search
    return recover(study, plan.client, plan.experiment_id, grace_period=float(search.grace_period),
                   retry=bool(search.retry_lost), journal=plan.locations.is_journal, **kwargs)  # type: ignore[arg-type]


def run_sweep(plan: SweepPlan, console: Console | None = None) -> SweepSummary:
    """Run a validated sweep; same study name + same storage resumes it.

    Args:
        plan: from `prepare_sweep`.
        console: where the live view goes (a quiet one in tests).

    Returns:
        The summary; its `status` is the parent run's: FINISHED or FAILED. Ctrl-C and SIGTERM
        raise KeyboardInterrupt after the trials, workers and parent run are ended (KILLED).
    """
    console = console or Console()
    cfg = plan.cfg
    with interrupt_on_signals():
        study = open_study(plan)
        first = len(study.trials)
        resumed = open_sweep_run(plan, study)  # from here on the parent run is ended on every path
        status, pool, progress = "FAILED", None, None
        try:
            lost = _recover(plan, study)
            if lost:
                console.print(f"ended {len(lost)} trial(s) whose worker was lost: {', '.join(map(str, lost))}"
                              + (" (their params are enqueued again)" if cfg.search.retry_lost else ""))
            if resumed:
                console.print(f"resuming study [bold]{study.study_name}[/] ({first} earlier trials)")
            baselines = enqueue_baselines(study, plan.space, cfg)
            if baselines:
                console.print(f"first trials: {', '.join(baselines)} (search.enqueue)")
            n_trials = int(cfg.search.n_trials)
            budget = Budget(n_trials, int(cfg.search.max_refused))
            deadline = time.time() + float(cfg.search.timeout) if cfg.search.timeout else None
            progress = SweepProgress(study, first, n_trials, str(cfg.search.metric), console,
                                     max_refused=int(cfg.search.max_refused))
            with Live(progress, console=console, refresh_per_second=2, transient=False), Poller(progress):
                def on_death(pid: int) -> None:
                    """End the trial of a worker that died and give it back to the budget."""
                    _recover(plan, study)
                    budget.give_back(lost_trials_of(study, pid))

                pool = WorkerPool(plan, int(cfg.search.n_workers) - 1, budget, deadline, on_death)
                while True:  # the main process is a worker too, and runs what a dead worker gives back
                    run_trials(plan, study, budget, deadline, before_each=pool.reap)
                    if not pool.alive():
                        break
                    pool.wait()
            console.print()  # the live view's last line has no newline of its own when stdout is not a terminal
            summary = summarize(study, first, plan.parent_run_id, plan.locations, resumed,
                                owners={os.getpid(), *pool.pids}, crashed=pool.crashed)
            status = summary.status
            if summary.n_complete:
                _log_views(study, plan, console)
        except KeyboardInterrupt:
            status = "KILLED"
            if pool is not None:
                pool.stop()
            _recover(plan, study, ended_pids={os.getpid(), *(pool.pids if pool else [])}, reason=INTERRUPTED)
            if progress is not None:
                progress.poll()  # the lines of the trials the interrupt ended
            console.print()
            console.print(f"interrupted: finished trials are kept; run the same command to resume study {study.study_name}")
            raise
        finally:
            ignore_signals()  # the record is being closed: a late SIGTERM must not leave the parent run RUNNING
            if pool is not None:
                pool.stop()
            try:
                record_best(plan.client, str(plan.parent_run_id), study, str(cfg.search.metric))
            finally:
                plan.client.set_terminated(plan.parent_run_id, status=status)
    return summary


def _log_views(study: optuna.Study, plan: SweepPlan, console: Console) -> None:
    """Sweep-end pictures; a storage error here must not turn a finished sweep into a failed command."""
    from convsweep.dashboards.sweep_views import log_sweep_views

    try:
        log_sweep_views(study, plan.client, plan.parent_run_id, str(plan.cfg.search.metric), plan.data,
                        int(plan.cfg.search.top_k_views), console)
    except Exception as exc:  # the trials are recorded already; the views can be redrawn
        console.print(f"[yellow]warning:[/] sweep views not logged ({type(exc).__name__}: {exc}); "
                      f"retry with: convsweep report --study {study.study_name}")
