"""Trial models logged to MLflow in a background thread, so the next trial does not wait for them.

Logging a model is 0.09-0.11 s in a warm process and 1.8 s the first time (MLflow's model
modules are imported then): on a 2 s GPU trial that is 5-90% of it, for every trial that
improves the best (`search.log_models=best`). The trial is told COMPLETE at once; its MLflow
run stays RUNNING until the model is logged, then gets the `convsweep.model_uri` tag and its
final status. So the record says what happened: a run whose worker was killed meanwhile is
ended later by the recovery (`close_orphan_runs`) without that tag, which is then the truth:
no model. A model that fails to log leaves its error in `convsweep.model_error`; the trial
keeps its result. Every worker drains its queue before it ends (Ctrl-C included).
"""

from __future__ import annotations

import sys
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterable, Mapping

from convsweep.dashboards.leaderboard import MODEL_URI
from convsweep.search import run_records as rr
from convsweep.search.masking import mask_uri
from convsweep.search.model_logging import log_model

MODEL_ERROR = "convsweep.model_error"  # run tag: why the trial's model could not be logged


class ModelQueue:
    """One worker's models waiting to be logged, in one background thread, in order."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="convsweep-model-log")
        self._jobs: list[Future[None]] = []

    def log_and_finish(self, client: Any, run_id: str, model: Any, input_shape: Iterable[int],
                       metrics: Mapping[str, float], tags: Mapping[str, Any]) -> None:
        """Log `model` (already on the CPU) to the run, then end the run COMPLETE with `metrics` and `tags`."""
        self._jobs.append(self._pool.submit(_log_and_finish, client, run_id, model, tuple(input_shape),
                                            dict(metrics), dict(tags)))

    def drain(self) -> None:
        """Wait until every queued model is logged and its run ended."""
        jobs, self._jobs = self._jobs, []
        for job in jobs:
            try:
                job.result()
            except Exception as exc:  # noqa: BLE001 - the store failed even for the run's end: say so, keep going
                print(f"warning: a trial's MLflow run could not be ended ({type(exc).__name__}: "
                      f"{mask_uri(str(exc))}); `convsweep recover` ends it", file=sys.stderr)

    def close(self) -> None:
        self.drain()
        self._pool.shutdown()


def _log_and_finish(client: Any, run_id: str, model: Any, input_shape: tuple[int, ...],
                    metrics: dict[str, float], tags: dict[str, Any]) -> None:
    try:
        tags[MODEL_URI] = log_model(run_id, model, input_shape)
    except Exception as exc:  # noqa: BLE001 - the trial's result stands without its model
        tags[MODEL_ERROR] = mask_uri(f"{type(exc).__name__}: {exc}")[:1000]
    rr.finish_run(client, run_id, "COMPLETE", metrics, tags)
