"""Several machines on one study: `convsweep sweep` processes, each its own invocation, against a real
PostgreSQL Optuna storage and a real `mlflow server` (HTTP, backed by PostgreSQL), all on 127.0.0.1.

Each test gets two fresh PostgreSQL schemas in the CONVSWEEP_TEST_PG database (one for Optuna,
one for MLflow: both keep an `alembic_version` table), dropped at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from convsweep.dashboards.leaderboard import WORKER_LOST, trial_reason
from convsweep.search.lease import LEASE
from convsweep.search.storage import resolve_locations
from tests.search.conftest import tiny_overrides
from tests.search.records import (EVENT_TIMEOUT_S, TS, check_true_record, start_sweep, wait_for_epoch)

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
SERVER_START_TIMEOUT_S = 300  # MLflow 3's server answers after 15-40 s here, more on a loaded CI machine


def in_schema(url: str, schema: str) -> str:
    """`url` with its connections' search_path set to `schema` (libpq's `options`)."""
    parts = urlsplit(url)
    query = [*parse_qsl(parts.query), ("options", f"-csearch_path={schema}")]
    return urlunsplit(parts._replace(query=urlencode(query)))


@pytest.fixture
def pg_schemas(pg_url: str) -> Iterator[tuple[str, str]]:
    """(Optuna storage URL, MLflow backend URL), each in a schema of its own."""
    import sqlalchemy as sa

    base = f"convsweep_{uuid.uuid4().hex[:10]}"
    schemas = (f"{base}_optuna", f"{base}_mlflow")
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        for schema in schemas:
            conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    try:
        yield in_schema(pg_url, schemas[0]), in_schema(pg_url, schemas[1])
    finally:
        with engine.begin() as conn:
            for schema in schemas:
                conn.execute(sa.text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        engine.dispose()


@pytest.fixture
def mlflow_server(pg_schemas: tuple[str, str], free_port: Callable[[], int], tmp_path: Path) -> Iterator[str]:
    """A real `mlflow server` on 127.0.0.1 backed by PostgreSQL; returns its URL once /health answers."""
    port, log = free_port(), tmp_path / "mlflow-server.log"
    env = {**os.environ, "MLFLOW_BACKEND_STORE_URI": pg_schemas[1],  # in the environment, not in argv
           "MLFLOW_DEFAULT_ARTIFACT_ROOT": (tmp_path / "server-artifacts").as_uri(),
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": "2", "MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW": "6"}  # 100 slots, shared
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                                 "--workers", "1"], stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"mlflow server exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"mlflow server did not answer in {SERVER_START_TIMEOUT_S} s"
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_two_machines_share_a_study_exactly_and_a_killed_one_leaves_no_zombie(
        tmp_path: Path, pg_schemas: tuple[str, str], mlflow_server: str) -> None:
    optuna_url = pg_schemas[0]

    def machine(name: str, n_trials: int, *extra: str) -> subprocess.Popen:
        args = tiny_overrides(tmp_path / name, "machines", f"search.n_trials={n_trials}", "pruner=none",
                              f"tracking.optuna_storage='{optuna_url}'", f"tracking.mlflow_uri={mlflow_server}",  # quoted: the URL has '='
                              f"tracking.artifact_location={(tmp_path / 'artifacts').as_uri()}",
                              "search.heartbeat_interval=1", "search.grace_period=10", *extra)
        return start_sweep(args, tmp_path / f"{name}.log", tmp_path)

    loc = resolve_locations({"run_dir": str(tmp_path / "a"), "optuna_storage": optuna_url, "mlflow_uri": mlflow_server})
    a = machine("a", 3)
    wait_for_epoch(a, tmp_path / "a.log", loc, "machines")  # b starts once a's study exists, as a second machine would
    b = machine("b", 2, "trainer.max_epochs=100000")  # its trial runs until it is killed
    lost = wait_for_epoch(b, tmp_path / "b.log", loc, "machines", lambda t: t.user_attrs[LEASE]["pid"] == b.pid)
    b.kill()
    b.wait()
    assert a.wait(timeout=EVENT_TIMEOUT_S) == 0, (tmp_path / "a.log").read_text()[-3000:]

    again = machine("again", 2)  # the sweep run again: its start ends b's lost trial, if a's heartbeat check did not
    assert again.wait(timeout=EVENT_TIMEOUT_S) == 0, (tmp_path / "again.log").read_text()[-3000:]

    trials = check_true_record(loc, "machines")  # no RUNNING trial or run; one run per trial, same state and reason
    assert trials[lost.number].state == TS.FAIL and trial_reason(trials[lost.number]) == WORKER_LOST
    done = Counter(t.user_attrs[LEASE]["pid"] for t in trials if t.state.is_finished() and t.number != lost.number)
    assert done == {a.pid: 3, again.pid: 2}  # each invocation added exactly its search.n_trials; the lost one is not counted
    assert len(trials) == 6
    params = [tuple(sorted(t.params.items())) for t in trials]
    assert len(set(params)) == len(params)  # no machine repeated another's parameter set
