"""Where a study lives: the run directory, the Optuna storage and the MLflow store.

The embedded default keeps everything under one run directory: an Optuna journal file
(10-22 ms per trial here against 55-85 ms for SQLite, and safe for several local worker
processes), an MLflow SQLite store (migrated once per sweep, not per trial) and the
artifacts. Every location can be overridden with a URI; passwords never leave this module
unmasked.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from convsweep.errors import ConvsweepError
from convsweep.search.masking import mask_uri

_CREATE_ATTEMPTS = 4  # opening an RDB storage that another machine is creating at the same moment
# Each sweep process keeps at most 2 idle connections (SQLAlchemy's default keeps 5): its threads (trial,
# heartbeat, live view, worker watcher) rarely need more at once, and 4 machines x 8 workers x 5 would
# pass PostgreSQL's default of 100 connections. Bursts may open 6 more.
_RDB_POOL = {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 6}


class StorageError(ConvsweepError):
    """A storage or tracking location cannot be reached or created."""


@dataclass(frozen=True)
class Locations:
    """Resolved storage locations of one study."""

    run_dir: Path
    optuna_url: str  # a journal file path, or an RDB URL (sqlite:///, postgresql://)
    mlflow_uri: str
    artifact_location: str

    @property
    def is_journal(self) -> bool:
        return "://" not in self.optuna_url

    def describe(self) -> dict[str, str]:
        """Safe to log or print: passwords masked."""
        return {"run_dir": str(self.run_dir), "optuna_storage": mask_uri(self.optuna_url),
                "mlflow_uri": mask_uri(self.mlflow_uri), "artifact_location": mask_uri(self.artifact_location)}


def resolve_locations(tracking: Mapping[str, Any]) -> Locations:
    """Fill in the run-directory defaults for whatever the `tracking:` group leaves null."""
    run_dir = Path(str(tracking.get("run_dir") or "./convsweep-runs")).expanduser().resolve()
    optuna_url = tracking.get("optuna_storage") or str(run_dir / "optuna-journal.log")
    if optuna_url.startswith("journal://"):
        optuna_url = optuna_url[len("journal://"):]
    mlflow_uri = tracking.get("mlflow_uri") or f"sqlite:///{run_dir / 'mlflow.db'}"
    artifacts = tracking.get("artifact_location") or (run_dir / "mlartifacts").as_uri()
    return Locations(run_dir, str(optuna_url), str(mlflow_uri), str(artifacts))


def open_optuna_storage(loc: Locations, create: bool = True, heartbeat_interval: int = 60, grace_period: int = 180,
                        stale_trial_callback: Callable[[Any, Any], None] | None = None) -> Any:
    """Open the Optuna storage; a journal file is created only when `create` (so a failed start writes nothing).

    On RDB storages a running trial beats every `heartbeat_interval` seconds; one silent for
    `grace_period` seconds is failed by the next worker that asks for a trial, which then calls
    `stale_trial_callback(study, trial)` (search/recovery.py ends its MLflow run). The journal
    file has no heartbeat: search/lease.py stands in for it.

    Raises:
        StorageError: the database is unreachable or the path cannot be created.
    """
    if loc.is_journal:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        path = Path(loc.optuna_url)
        if not create and not path.exists():
            raise StorageError(f"no Optuna journal at {path}; run `convsweep sweep` first or point tracking.run_dir at the sweep's folder")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(str(path)))
        except OSError as exc:
            raise StorageError(f"cannot write the Optuna journal at {path} ({exc.strerror}); set tracking.run_dir to a writable folder") from None
    try:
        return _rdb_storage(loc.optuna_url, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
                            heartbeat_stale_trial_callback=stale_trial_callback, engine_kwargs=_RDB_POOL)
    except Exception as exc:  # sqlalchemy's OperationalError and friends: message may contain the URL
        reason = mask_uri(" ".join(str(exc).split())).split("(Background")[0][:200]
        raise StorageError(f"cannot reach the Optuna storage {mask_uri(loc.optuna_url)}: {reason}; "
                           "check that the server runs and the URL, user and password are right") from None


def _rdb_storage(url: str, **kwargs: Any) -> Any:
    """`optuna.storages.RDBStorage(url, **kwargs)`, opened again when another machine is creating its tables.

    Two machines creating Optuna's tables in one fresh database at once: the loser's commit hits the
    winner's rows (a unique key) and Optuna raises StorageInternalError. The tables exist by then.
    """
    import optuna

    attempt = 1
    while True:
        try:
            with warnings.catch_warnings():  # heartbeat is "experimental" in Optuna but is how stale trials get failed
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, **kwargs)
        except optuna.exceptions.StorageInternalError:
            if attempt == _CREATE_ATTEMPTS:
                raise
            time.sleep(0.5 * attempt)
            attempt += 1


def init_mlflow(loc: Locations) -> Any:
    """Point MLflow at the store once per process and return a client (runs the SQLite migrations once)."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # no network here, and no reason to phone home
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # a server's per-run URL lines would cut the live view
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per small model download is noise
    import mlflow
    from mlflow.tracking import MlflowClient

    try:
        if loc.mlflow_uri.startswith("sqlite:///"):
            Path(loc.mlflow_uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(loc.mlflow_uri)
        client = MlflowClient(loc.mlflow_uri)
        client.search_experiments(max_results=1)
    except Exception as exc:
        raise StorageError(f"cannot open the MLflow store {mask_uri(loc.mlflow_uri)}: "
                           f"{mask_uri(' '.join(str(exc).split()))[:200]}; check tracking.mlflow_uri") from None
    return client


def experiment_id(client: Any, name: str, loc: Locations, create: bool = True) -> str | None:
    """The MLflow experiment of a study (one per study), created with the run directory's artifact root."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    if not create:
        return None
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(name, artifact_location=f"{loc.artifact_location.rstrip('/')}/{_slug(name)}")
    except MlflowException as exc:  # another machine starting the same study created it first
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "study"
