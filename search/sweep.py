"""`run_sweep`: run a planned sweep (see `preflight.prepare_sweep`) with its workers and live view.

One MLflow experiment per study, a parent run per study (reopened when the same study
resumes), N worker processes sharing the study storage, the live view, and the sweep-level
pictures at the end. Each step lives in its own module: `samplers`, `studies`, `workers`,
`parent_run`, `live_view`, `summary`.
"""

from __future__ import annotations

import optuna
from rich.console import Console
from rich.live import Live

from convsweep.errors import ConvsweepError
from convsweep.search.live_view import Poller, SweepProgress
from convsweep.search.parent_run import open_sweep_run
from convsweep.search.preflight import SweepPlan
from convsweep.search.studies import open_study
from convsweep.search.summary import SweepSummary, summarize
from convsweep.search.workers import run_trials, start_workers


def run_sweep(plan: SweepPlan, console: Console | None = None) -> SweepSummary:
    """Run a validated sweep; same study name + same storage resumes it.

    Args:
        plan: from `prepare_sweep`.
        console: where the live view goes (a quiet one in tests).
    """
    console = console or Console()
    cfg = plan.cfg
    study = open_study(plan)
    first = len(study.trials)
    resumed = open_sweep_run(plan, study)
    n_trials, n_workers = int(cfg.search.n_trials), int(cfg.search.n_workers)
    target = first + n_trials
    if resumed:
        console.print(f"resuming study [bold]{study.study_name}[/] ({first} earlier trials)")
    progress = SweepProgress(study, first, n_trials, str(cfg.search.metric), console)
    status = "FAILED"
    try:
        with Live(progress, console=console, refresh_per_second=2, transient=False), Poller(progress):
            procs = start_workers(plan, n_workers - 1, target)
            run_trials(plan, study, target if n_workers > 1 else None, n_trials if n_workers == 1 else None)
            for proc in procs:
                proc.join()
            if any(p.exitcode for p in procs):
                raise ConvsweepError(f"{sum(bool(p.exitcode) for p in procs)} worker process(es) failed; see the messages above")
        console.print()  # the live view's last line has no newline of its own when stdout is not a terminal
        _log_views(study, plan, console)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        console.print(f"interrupted: finished trials are kept; run the same command to resume study {study.study_name}")
        raise
    finally:
        plan.client.set_terminated(plan.parent_run_id, status=status)
    return summarize(study, first, plan.parent_run_id, plan.locations, resumed)


def _log_views(study: optuna.Study, plan: SweepPlan, console: Console) -> None:
    """Sweep-end pictures; a storage error here must not turn a finished sweep into a failed command."""
    from convsweep.dashboards.sweep_views import log_sweep_views

    try:
        log_sweep_views(study, plan.client, plan.parent_run_id, str(plan.cfg.search.metric), plan.data,
                        int(plan.cfg.search.top_k_views), console)
    except Exception as exc:  # the trials are recorded already; the views can be redrawn
        console.print(f"[yellow]warning:[/] sweep views not logged ({type(exc).__name__}: {exc}); "
                      f"retry with: convsweep report --study {study.study_name}")
