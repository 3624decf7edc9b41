"""The live terminal view of a sweep: trials done, pruned and failed, best so far, elapsed.

It polls the study's storage rather than hooking the objective, so it shows the trials of
every worker process, local or remote, the same way.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import optuna
from rich.console import Console, Group
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from convsweep.dashboards.leaderboard import format_cost, not_started, ranked_trials, refused_before_training, trial_reason

TrialState = optuna.trial.TrialState


class SweepProgress:
    """Renders the sweep's state; `poll()` re-reads the storage and prints each newly finished trial."""

    def __init__(self, study: optuna.Study, first_number: int, n_trials: int, metric: str, console: Console,
                 max_refused: int = 0) -> None:
        self.study, self.first, self.metric, self.console = study, first_number, metric, console
        self.max_refused, self.refused = max_refused, 0  # refusals before training do not count, up to the cap
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                            TimeElapsedColumn(), console=console)
        self.task = self.bar.add_task(f"sweep {study.study_name}", total=n_trials)
        self.counts = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0, "RUNNING": 0}
        self.best: tuple[int, float] | None = None
        self._reported: set[int] = set()
        self._lock = threading.Lock()

    def poll(self) -> None:
        with self._lock:
            trials = [t for t in self.study.get_trials(deepcopy=False) if t.number >= self.first]
            self.counts = {s: sum(t.state.name == s for t in trials) for s in self.counts}
            for t in sorted(trials, key=lambda t: t.number):
                if t.state.is_finished() and t.number not in self._reported:
                    self._reported.add(t.number)
                    self.console.print(self._line(t))
            self.refused = sum(refused_before_training(t) for t in trials)
            finished = sum(t.state.is_finished() for t in trials)
            waited = sum(not_started(t) for t in trials)
            self.bar.update(self.task, completed=finished - waited - min(self.refused, self.max_refused))
            best = ranked_trials(self.study, 1)  # by the metric, also in a multi-objective study
            if best:
                self.best = (best[0].number, float(best[0].values[0]))

    def _line(self, t: optuna.trial.FrozenTrial) -> Text:
        colour = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red"}.get(t.state.name, "white")
        # the trial's own training time: with search.ask_ahead its Optuna duration includes its wait
        duration = t.user_attrs.get("duration_s") or (t.duration.total_seconds() if t.duration else 0.0)
        detail = self._detail(t)
        return Text.assemble((f"trial {t.number:>3} ", "bold"), (f"{t.state.name:<8}", colour),
                             f" {detail}  ({duration:.1f} s)")

    def _detail(self, t: optuna.trial.FrozenTrial) -> str:
        """The metric, or why the trial has none: its recorded reason (invalid architecture, error, pruned at
        epoch k, interrupted, worker lost)."""
        if t.values is not None:  # the metric, then any other objectives (model/params, ...)
            names = self.study.metric_names or [self.metric]
            return "  ".join([f"{self.metric}={t.values[0]:.4f}"] + [f"{n}={format_cost(v)}" for n, v in zip(names[1:], t.values[1:])])
        reason = (trial_reason(t) or "").strip().splitlines()
        if reason:
            return reason[-1][:160]
        return f"at epoch {max(t.intermediate_values)}" if t.intermediate_values else ""

    def __rich__(self) -> Group:
        c = self.counts
        best = f"best {self.metric} = {self.best[1]:.4f} (trial {self.best[0]})" if self.best else "no completed trial yet"
        status = Text.assemble(("done ", "bold"), (str(c["COMPLETE"]), "green"), "  pruned ", (str(c["PRUNED"]), "yellow"),
                               "  failed ", (str(c["FAIL"]), "red"), f"  running {c['RUNNING']}",
                               f"  (refused before training: {self.refused})" if self.refused else "", f"   {best}")
        return Group(self.bar, status)


class Poller:
    """Calls `progress.poll()` every `interval` seconds on a daemon thread until stopped."""

    def __init__(self, progress: SweepProgress, interval: float = 1.0) -> None:
        self.progress, self.interval = progress, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="convsweep-progress")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.progress.poll()
            except Exception:  # a storage hiccup must not kill the display; the next poll retries
                time.sleep(self.interval)

    def __enter__(self) -> "Poller":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.progress.poll()
