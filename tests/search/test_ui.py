"""`convsweep ui`, run as a user would: one-line errors, and servers that answer and stop on Ctrl-C."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest
from mlflow import MlflowClient

from convsweep.search.storage import experiment_id, open_optuna_storage, resolve_locations
from tests.conftest import CONVSWEEP, CONVSWEEP_ENV, UiProcess

STUDY = "ui-study"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, migrated_mlflow_db: Path) -> Path:
    """A run directory as a sweep leaves it: the study's MLflow experiment and its Optuna study."""
    run_dir = tmp_path_factory.mktemp("runs")
    shutil.copy(migrated_mlflow_db, run_dir / "mlflow.db")
    loc = resolve_locations({"run_dir": str(run_dir)})
    experiment_id(MlflowClient(loc.mlflow_uri), STUDY, loc)
    optuna.create_study(study_name=STUDY, storage=open_optuna_storage(loc))
    return run_dir


def ui(run_dir: Path, port: int, *extra: str, env: dict[str, str] = CONVSWEEP_ENV) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CONVSWEEP, "ui", "--port", str(port), f"tracking.run_dir={run_dir}",
                           f"search.study_name={STUDY}", *extra],
                          capture_output=True, text=True, timeout=120, cwd=run_dir.parent, env=env)


def assert_one_line_error(out: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    for fragment in fragments:
        assert fragment in lines[0]


def get_json(url: str) -> Any:
    with _NO_PROXY.open(url, timeout=30) as response:
        return json.load(response)


def test_taken_port_is_a_one_line_error(store: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = ui(store, port)
    assert_one_line_error(out, f"127.0.0.1:{port}", "in use")


@pytest.mark.parametrize("state", ["missing", "empty"])
def test_missing_or_empty_store_says_to_sweep_first(tmp_path: Path, free_port: Callable[[], int], state: str,
                                                   migrated_mlflow_db: Path) -> None:
    run_dir = tmp_path / "runs"
    if state == "empty":  # a store MLflow made, holding only its Default experiment
        run_dir.mkdir()
        shutil.copy(migrated_mlflow_db, run_dir / "mlflow.db")
    out = ui(run_dir, free_port())
    assert_one_line_error(out, "run `convsweep sweep` first", "tracking.run_dir=")
    assert run_dir.exists() == (state == "empty")


def test_missing_optuna_dashboard_names_the_extra(store: Path, free_port: Callable[[], int]) -> None:
    out = ui(store, free_port(), "--optuna", "--optuna-port", str(free_port()), env={**CONVSWEEP_ENV, "PATH": "/nonexistent"})
    assert_one_line_error(out, "pip install 'convsweep[dashboard]'")


@pytest.mark.slow
def test_ui_serves_the_study_and_stops_on_ctrl_c(store: Path, free_port: Callable[[], int],
                                                 start_ui: Callable[..., UiProcess]) -> None:
    port, optuna_port = free_port(), free_port()
    server = start_ui("--port", str(port), "--optuna", "--optuna-port", str(optuna_port),
                      f"tracking.run_dir={store}", f"search.study_name={STUDY}")
    base = f"http://127.0.0.1:{port}"
    exp = get_json(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name={STUDY}")["experiment"]
    assert server.url.startswith(f"{base}/#/experiments/{exp['experiment_id']}/runs")
    with _NO_PROXY.open(server.url, timeout=30) as page:
        assert page.status == 200
    studies = get_json(f"http://127.0.0.1:{optuna_port}/api/studies")["study_summaries"]
    assert [s["study_name"] for s in studies] == [STUDY]

    assert server.stop() == 0
    assert "Traceback" not in server.stderr.read_text()
    for freed in (port, optuna_port):  # the servers went with it
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", freed))
