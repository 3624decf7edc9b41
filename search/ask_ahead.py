"""Ask ahead: the next trial is asked and sampled in a background thread while the current one trains.

`study.optimize` asks and samples each trial on the critical path. At 1,000 trials TPE's proposal
for the default space costs 100-300 ms (benchmarks/RESULTS.md section 4): 5-15% of a 2 s GPU
trial. This loop uses Optuna's ask-and-tell interface to take it off that path, and does around
each trial what `study.optimize` does: RDB storages' stale trials are failed before each ask, a
trial beats from its ask to its tell (its lease; `record_heartbeat` on RDB storages), it is told
its state (PRUNED, FAIL, or its values), the callbacks run with the finished trial, and an error
outside `catch` stops the loop once its trial is told FAIL.

The trial asked ahead is RUNNING while it waits: constant-liar TPE sees it, and its lease names
this process, so a killed worker's waiting trial ends `worker lost` like its current one. When the
loop stops before a waiting trial starts (Ctrl-C, SIGTERM, `search.timeout`, an error), that trial
ends FAIL with a reason that starts with `not started:` and goes back to the budget.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Sequence

import optuna

from convsweep.dashboards.leaderboard import NOT_STARTED, not_started
from convsweep.search.interrupts import deferred

if TYPE_CHECKING:  # the objective imports torch and Lightning; this loop needs neither
    from convsweep.search.objective import TrialSteps
Callback = Callable[[optuna.Study, optuna.trial.FrozenTrial], None]


@dataclass
class _Asked:
    """A trial asked and sampled ahead, holding its lease until it is told."""

    trial: optuna.Trial
    lease: contextlib.ExitStack
    sampled: Any = None
    error: BaseException | None = None  # sampling failed: the trial ends with this error when its turn comes


@dataclass
class AskAheadLoop:
    """One worker's trials, each asked while the one before it trains.

    Args:
        study: this worker's handle on the shared study.
        steps: the trial's lease, sampling and run (search/objective.py).
        callbacks: called with each finished trial, as `study.optimize` calls its callbacks.
        catch: errors that end one trial (FAIL) without stopping the loop.
    """

    study: optuna.Study
    steps: TrialSteps
    callbacks: Sequence[Callback]
    catch: tuple[type[BaseException], ...]

    def run(self, claim: Callable[[], bool], give_back: Callable[[], None], expired: Callable[[], bool],
            before_each: Callable[[], None] = lambda: None) -> None:
        """Run trials until `claim` refuses one or `expired` says time is up.

        Args:
            claim: takes one trial from the budget; False when none is left. Called before each ask.
            give_back: returns one claimed trial that never started.
            expired: whether `search.timeout` has passed: a trial waiting then does not start.
            before_each: called before each trial starts (the main process watches its workers there).
        """
        pending: Future[_Asked] | None = None
        current: _Asked | None = None  # asked, not yet handed to `_run`
        with warnings.catch_warnings(), ThreadPoolExecutor(1, thread_name_prefix="convsweep-ask-ahead") as asker:
            # set once here: `catch_warnings` in the asker thread would race the training thread's filters
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # fail_stale_trials
            warnings.filterwarnings("ignore", message="Heartbeat of storage")  # "...used with Study.optimize": the lease beats
            try:
                while True:
                    before_each()
                    if pending is None:
                        with deferred():  # a claim is never lost between the budget and the ask
                            if expired() or not claim():
                                return
                            pending = asker.submit(self._ask)
                    current, pending = pending.result(), None
                    if expired():
                        self._abandon(current, f"{NOT_STARTED}: search.timeout passed while it waited", give_back)
                        current = None
                        return
                    with deferred():
                        if claim():
                            pending = asker.submit(self._ask)  # asked and sampled while `current` trains
                    running, current = current, None
                    self._run(running)
            except BaseException as exc:
                why = f"{NOT_STARTED}: " + ("interrupted" if isinstance(exc, KeyboardInterrupt)
                                            else f"the worker stopped ({type(exc).__name__})")
                if current is not None:
                    self._abandon(current, why, give_back)
                if pending is not None:
                    self._abandon_pending(pending, why, give_back)
                raise

    def _abandon_pending(self, pending: Future[_Asked], reason: str, give_back: Callable[[], None]) -> None:
        """Wait for the trial being asked, then abandon it; if the ask itself failed there is no trial, only the claim."""
        try:
            asked = pending.result()
        except Exception:  # noqa: BLE001 - the error that stops the loop is the one to raise
            give_back()
            return
        self._abandon(asked, reason, give_back)

    def _ask(self) -> _Asked:
        """Ask a trial, lease it and sample its architecture (in the asker thread)."""
        optuna.storages.fail_stale_trials(self.study)  # as study.optimize does before each trial; a no-op on the journal
        trial = self.study.ask()
        asked = _Asked(trial, contextlib.ExitStack())
        try:
            asked.lease.enter_context(self.steps.lease(trial))
            asked.sampled = self.steps.sample(trial)
        except Exception as exc:  # noqa: BLE001 - ends this trial when its turn comes, as inside study.optimize
            asked.error = exc
        return asked

    def _run(self, asked: _Asked) -> None:
        """Run one trial and tell the study how it ended; re-raise what `catch` does not cover (before the
        callbacks, as study.optimize does), else call the callbacks with the finished trial."""
        values: Any = None
        state: optuna.trial.TrialState | None = None
        error: BaseException | None = None
        try:
            with asked.lease:
                if asked.error is not None:
                    raise asked.error
                values = self.steps.run(asked.trial, asked.sampled)
        except optuna.TrialPruned as exc:
            state, error = optuna.trial.TrialState.PRUNED, exc
        except (Exception, KeyboardInterrupt) as exc:
            state, error = optuna.trial.TrialState.FAIL, exc
        with deferred():
            frozen = self._tell(asked.trial, values, state)
        if state == optuna.trial.TrialState.FAIL and error is not None and not isinstance(error, self.catch):
            raise error
        for callback in self.callbacks:
            callback(self.study, frozen)

    def _abandon(self, asked: _Asked, reason: str, give_back: Callable[[], None]) -> None:
        """End a trial that was asked ahead but never ran: FAIL with `reason`, back to the budget.

        If the store fails here the trial stays RUNNING and keeps its claim: the recovery ends it
        `worker lost` and gives it back then, so it is never given back twice.
        """
        with deferred():
            with asked.lease:
                with contextlib.suppress(Exception):
                    asked.trial.set_user_attr("reason", reason)
            try:
                frozen = self._tell(asked.trial, None, optuna.trial.TrialState.FAIL)
            except Exception:  # noqa: BLE001 - the error that stops the loop is the one to raise
                return
            if not_started(frozen):
                give_back()

    def _tell(self, trial: optuna.Trial, values: Any, state: optuna.trial.TrialState | None) -> optuna.trial.FrozenTrial:
        """Tell the study; a trial already ended (a recovery failed it as lost) keeps its state."""
        return self.study.tell(trial, values, state=state, skip_if_finished=True)


def deadline_passed(deadline: float | None) -> Callable[[], bool]:
    """`expired` for `AskAheadLoop.run`: whether `search.timeout`'s deadline (unix seconds) has passed."""
    return lambda: deadline is not None and time.time() >= deadline
