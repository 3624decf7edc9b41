"""Worker processes: each takes trials from the sweep's budget and runs them on the shared study.

The budget is the number of trials this invocation adds (`search.n_trials`), one counter
shared by its local worker processes, so the count is exact however many workers race for
the last trial; a trial lost with a worker that died is given back to it. SIGTERM, which
cluster schedulers send, is handled like Ctrl-C in every process, so a trial that is
interrupted ends FAIL with the reason `interrupted` instead of staying RUNNING.
"""

from __future__ import annotations

import multiprocessing
import sys
import threading
import time
from multiprocessing.connection import wait
from typing import Callable

import optuna
from omegaconf import DictConfig, OmegaConf

from convsweep.dashboards.leaderboard import refused_before_training
from convsweep.errors import ConvsweepError
from convsweep.lightning_modules.data import load_dataset
from convsweep.lightning_modules.worker_budget import set_worker_threads
from convsweep.search.ask_ahead import AskAheadLoop, deadline_passed
from convsweep.search.interrupts import interrupt_on_signals
from convsweep.search.masking import mask_uri
from convsweep.search.model_queue import ModelQueue
from convsweep.search.objective import make_objective, make_trial_steps
from convsweep.search.parent_run import best_tags_callback
from convsweep.search.preflight import SweepPlan, space_source
from convsweep.search.space import parse_space
from convsweep.search.storage import init_mlflow, resolve_locations
from convsweep.search.studies import open_study

# Errors that end one trial (recorded as FAIL) without stopping the sweep. Anything else is a bug.
TRIAL_ERRORS = (ConvsweepError, RuntimeError, FloatingPointError)
INTERRUPTED_EXIT = 130  # a worker process that was interrupted (Ctrl-C, SIGTERM) exits with this, as a shell does
_SPAWN = multiprocessing.get_context("spawn")  # CUDA and threads start clean in each worker


class Budget:
    """The trials this invocation may still start, shared by its local worker processes.

    A trial refused before training (its feature map collapses, or it is over `search.max_macs` /
    `search.max_params`) costs a fraction of a second and no epoch; up to `max_refused` of them are
    given back, so `search.n_trials` counts trials that train. TPE still learns the limits from them
    (Optuna constraints). Past the cap they count, so a space that is all over budget still ends.
    """

    def __init__(self, n: int, max_refused: int = 0) -> None:
        self._left = _SPAWN.Value("i", n)
        self._refunds = _SPAWN.Value("i", max_refused)

    @property
    def left(self) -> int:
        return int(self._left.value)

    def take(self) -> bool:
        """Claim one trial; False when none is left."""
        with self._left.get_lock():
            if self._left.value <= 0:
                return False
            self._left.value -= 1
            return True

    def give_back(self, n: int) -> None:
        """Return trials that were lost with their worker: they do not count."""
        with self._left.get_lock():
            self._left.value += n

    def after_trial(self, _study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """`study.optimize` callback: a trial refused before training is given back (`refund_refused`)."""
        if refused_before_training(trial):
            self.refund_refused()

    def refund_refused(self) -> bool:
        """Give back a trial refused before training, while the cap allows; whether it was given back."""
        with self._refunds.get_lock():
            if self._refunds.value <= 0:
                return False
            self._refunds.value -= 1
        self.give_back(1)
        return True


def run_trials(plan: SweepPlan, study: optuna.Study, budget: Budget, deadline: float | None,
               before_each: Callable[[], None] = lambda: None) -> None:
    """One worker's loop: claim a trial from the budget and run it, until the budget or the time is spent.

    Args:
        plan: the sweep.
        study: this worker's handle on the shared study.
        budget: shared by the sweep's local workers.
        deadline: unix seconds after which no trial starts (`search.timeout`), or None.
        before_each: called before each claim (the main process watches its workers there).
    """
    set_threads(plan.cfg)
    callbacks = [best_tags_callback(plan.client, str(plan.parent_run_id), str(plan.cfg.search.metric)),
                 budget.after_trial]
    models = ModelQueue()  # trial models are logged while the next trial trains
    try:
        if plan.cfg.search.ask_ahead is True:  # resolved in preflight (`resolve_ask_ahead`)
            loop = AskAheadLoop(study, make_trial_steps(plan, ask_ahead=True, models=models), callbacks, TRIAL_ERRORS)
            loop.run(budget.take, lambda: budget.give_back(1), deadline_passed(deadline), before_each)
            return
        objective = make_objective(plan, models)
        while True:
            before_each()
            if (deadline is not None and time.time() >= deadline) or not budget.take():
                return
            study.optimize(objective, n_trials=1, catch=TRIAL_ERRORS, callbacks=callbacks, gc_after_trial=False)
    finally:
        models.close()  # every model in the store and its run ended, Ctrl-C included, before the sweep's end


def set_threads(cfg: DictConfig) -> int:
    """Give this worker process its share of the cores, cores // search.n_workers torch threads.

    Without it each of N workers starts torch with one thread per core and the machine runs
    N-fold oversubscribed. `trainer.num_threads`, when set, wins (the trial sets it itself).
    """
    if cfg.trainer.get("num_threads"):
        return int(cfg.trainer.num_threads)
    return set_worker_threads(int(cfg.search.n_workers))


def _worker_main(cfg_container: dict, parent_id: str, exp_id: str, worker: int, budget: Budget,
                 deadline: float | None) -> None:
    """Entry point of an extra local worker process (spawned: fresh interpreter, own dataset cache)."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a spawned interpreter starts with Optuna's default
    with interrupt_on_signals():
        try:
            cfg = OmegaConf.create(cfg_container)
            locations = resolve_locations(cfg.tracking)
            plan = SweepPlan(cfg, parse_space(cfg_container["search_space"], space_source(cfg)),
                             load_dataset(cfg.dataset), locations, init_mlflow(locations), exp_id, parent_id)
            run_trials(plan, open_study(plan, worker), budget, deadline)
        except KeyboardInterrupt:  # the trial has ended `interrupted` already; no traceback for a stop that was asked for
            sys.exit(INTERRUPTED_EXIT)


class WorkerPool:
    """The sweep's extra local worker processes: started, watched and stopped by its main process.

    A watcher thread notices a worker that dies at once (not only between the main process's
    trials) and calls `on_death(pid)`, which ends its trial and gives it back to the budget.
    """

    def __init__(self, plan: SweepPlan, n: int, budget: Budget, deadline: float | None,
                 on_death: Callable[[int], None]) -> None:
        container = OmegaConf.to_container(plan.cfg, resolve=True)
        self.procs = [_SPAWN.Process(target=_worker_main, daemon=False, name=f"convsweep-worker-{i + 1}",
                                     args=(container, plan.parent_run_id, plan.experiment_id, i + 1, budget, deadline))
                      for i in range(n)]
        for proc in self.procs:
            proc.start()
        self.on_death = on_death
        self.crashed: list[tuple[int, int]] = []  # (pid, exit code) of workers that died while the sweep ran
        self._reaped: set[int] = set()
        self._lock = threading.Lock()
        self._stopping = False
        threading.Thread(target=self._watch, daemon=True, name="convsweep-workers").start()

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def alive(self) -> bool:
        return any(p.exitcode is None for p in self.procs)

    def _wait_for_exit(self) -> bool:
        """Block until a worker has exited that is not reaped yet (False once every worker is reaped).

        "Exited and not reaped", not "fewer running": a worker can die between two looks (its
        sentinel pipe closes a moment before waitpid reports it), and a watcher that then saw none
        running would stop without ending the dead worker's trial. The sentinel pipe alone is not
        enough either: a process the worker started (a DataLoader or compile worker, forked with the
        worker's fds) keeps its end open after a SIGKILL, so `exitcode` (waitpid) is polled each second too.
        """
        while True:
            unreaped = [p for p in self.procs if p.pid not in self._reaped]
            if not unreaped:
                return False
            if any(p.exitcode is not None for p in unreaped):
                return True
            wait([p.sentinel for p in unreaped], timeout=1.0)

    def wait(self) -> None:
        """Block until a worker exits, and handle it."""
        self._wait_for_exit()
        self.reap()

    def _watch(self) -> None:
        """Reap each worker as it exits; a store error in `on_death` is retried, never ends the watching."""
        while True:
            try:
                self.reap()
            except Exception as exc:
                print(f"convsweep: warning: ending a dead worker's trial failed ({type(exc).__name__}: "
                      f"{mask_uri(str(exc))}); retrying", file=sys.stderr)
                time.sleep(1.0)
                continue
            if not self._wait_for_exit():
                return

    def reap(self) -> None:
        """Join the workers that exited; for each that died while the sweep ran, record it and call `on_death`."""
        with self._lock:
            for p in self.procs:
                if p.exitcode is None or p.pid in self._reaped:
                    continue
                p.join()
                if p.exitcode != 0 and not self._stopping:
                    self.on_death(p.pid)
                    self.crashed.append((p.pid, p.exitcode))
                self._reaped.add(p.pid)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM each worker (its trial ends `interrupted`), join it; SIGKILL one that does not stop in time."""
        with self._lock:
            self._stopping = True
        for p in self.procs:
            if p.exitcode is None:
                p.terminate()
        for p in self.procs:
            p.join(timeout)
            if p.exitcode is None:
                p.kill()
                p.join()
