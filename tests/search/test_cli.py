"""The `convsweep` console script, run as a user would: in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.search.conftest import tiny_overrides


def convsweep(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "convsweep", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_help_lists_every_command(tmp_path: Path) -> None:
    out = convsweep("--help", cwd=tmp_path)
    assert out.returncode == 0
    for command in ("sweep", "train", "best", "reproduce", "evaluate", "report", "ui", "config"):
        assert command in out.stdout


LOADS_TORCH = pytest.mark.slow  # past the config checks: the subprocess imports torch, MLflow, ... (8-30 s each)


@pytest.mark.parametrize(("args", "message"), [
    (["dataset=imagenet"], "unknown dataset 'imagenet'; choose one of: cifar10, digits"),
    (["sampler=bayes"], "unknown sampler 'bayes'"),
    (["search.n_trails=3"], "unknown config key 'search.n_trails'"),
    (["search.n_trials"], "Error parsing override 'search.n_trials'"),
    (["trainer.max_epochs=many"], "trainer.max_epochs must be an integer >= 1 (got 'many')"),
    (["search.timeout=abc"], "search.timeout must be a number > 0, or null (got 'abc')"),
    (["search.seed=null"], "search.seed must be an integer (got None)"),
    pytest.param(["search_space.depth.low=9"], "conf/search_space/default.yaml: depth: low (9) > high (3)",
                 marks=LOADS_TORCH),
    pytest.param(["search.metric=val/f1"], "unknown metric 'val/f1'", marks=LOADS_TORCH),
    (["dataset=image_folder"], "dataset.root is required"),
    pytest.param(["dataset=fashion_mnist", "dataset.download=false", "dataset.root=/nonexistent"],
                 "/nonexistent/FashionMNIST/raw/train-images-idx3-ubyte", marks=LOADS_TORCH),
    pytest.param(["tracking.optuna_storage=postgresql://u:hunter2@127.0.0.1:1/db"], "cannot reach the Optuna storage",
                 marks=LOADS_TORCH),
])
def test_bad_input_is_one_line_nonzero_and_writes_nothing(tmp_path: Path, args: list[str], message: str) -> None:
    run_dir = tmp_path / "runs"
    out = convsweep("sweep", f"tracking.run_dir={run_dir}", *args, cwd=tmp_path)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert message in lines[0] and "Traceback" not in out.stderr
    assert "hunter2" not in out.stderr + out.stdout
    assert not run_dir.exists()


@pytest.mark.slow
def test_sweep_prints_results_and_the_ui_command(tmp_path: Path) -> None:
    run_dir = tmp_path / "runs"
    out = convsweep("sweep", *tiny_overrides(run_dir, "cli", "search.n_trials=2"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"results: {run_dir}" in out.stdout
    assert f"convsweep ui --study cli tracking.run_dir={run_dir}" in out.stdout
    assert "leaderboard: cli" in out.stdout
    assert (run_dir / "optuna-journal.log").is_file() and (run_dir / "mlflow.db").is_file()
