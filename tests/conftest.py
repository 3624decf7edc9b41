"""Shared by every test package: one MLflow store per session, free ports, and `convsweep ui` in a subprocess."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

CONVSWEEP = [sys.executable, "-m", "convsweep"]  # the console script, with this interpreter
CONVSWEEP_ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the URL line reaches the output file at once
UI_START_TIMEOUT_S = 180  # MLflow 3's server answers after 15-40 s here, more on a loaded CI machine


@dataclass
class UiProcess:
    """A running `convsweep ui`: the MLflow URL it printed, and where its output goes."""

    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    url: str = ""

    def stop(self) -> int:
        """Ctrl-C, as a user would; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


@pytest.fixture(scope="session")
def migrated_mlflow_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its schema made and only the `Default` experiment, never written again.

    Opening a new store runs MLflow's migrations (seconds); a test that needs a fresh store copies this file.
    """
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()  # the first query creates the tables
    return db


@pytest.fixture(scope="session")
def mlflow_client(migrated_mlflow_db: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One SQLite MLflow store for the session's tests that need a store but no sweep; each test makes
    its own experiment in it."""
    from mlflow import MlflowClient

    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    shutil.copy(migrated_mlflow_db, db)
    return MlflowClient(f"sqlite:///{db}")


@pytest.fixture
def pg_url() -> str:
    """The PostgreSQL server's URL in CONVSWEEP_TEST_PG (.ci/run starts the server and sets it); a test that
    needs it is skipped where it is unset, except in CI, where that fails it."""
    url = os.environ.get("CONVSWEEP_TEST_PG")
    if not url:
        if os.environ.get("CI"):
            pytest.fail("CONVSWEEP_TEST_PG is unset in CI: .ci/run should start PostgreSQL and export it")
        pytest.skip("set CONVSWEEP_TEST_PG=postgresql://user:pass@127.0.0.1/db to run")
    return url


@pytest.fixture
def free_port() -> Callable[[], int]:
    """`free_port()`: a port on 127.0.0.1 that nothing listens on now."""

    def pick() -> int:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])

    return pick


@pytest.fixture
def start_ui(tmp_path: Path) -> Iterator[Callable[..., UiProcess]]:
    """`start_ui(*args)`: `convsweep ui *args`, returned once it prints "Ctrl-C to stop"; stopped at teardown."""
    started: list[UiProcess] = []

    def start(*args: str) -> UiProcess:
        out, err = tmp_path / f"ui{len(started)}.out", tmp_path / f"ui{len(started)}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            proc = subprocess.Popen([*CONVSWEEP, "ui", *args], stdout=stdout, stderr=stderr, cwd=tmp_path,
                                    env=CONVSWEEP_ENV)
        ui = UiProcess(proc, out, err)
        started.append(ui)
        deadline = time.monotonic() + UI_START_TIMEOUT_S
        while "Ctrl-C to stop" not in out.read_text():
            if proc.poll() is not None:
                pytest.fail(f"convsweep ui exited with {proc.returncode}: {err.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"convsweep ui printed no URL within {UI_START_TIMEOUT_S} s: {out.read_text()}")
            time.sleep(0.5)
        match = re.search(r"MLflow UI: (\S+)", out.read_text())
        assert match, out.read_text()
        ui.url = match.group(1)
        return ui

    yield start
    for ui in started:
        ui.stop()
