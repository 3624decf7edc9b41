"""Real in-memory Optuna studies, a tiny ConvNet with random data, and runs in the session's MLflow store.

The studies are made the way a convsweep sweep makes them: conditional `block{i}.*` params,
per-epoch intermediate values and a deterministic pruner, so some trials end PRUNED.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Callable

import mlflow
import optuna
import pytest
import torch
from optuna.exceptions import ExperimentalWarning

from convsweep.lightning_modules.arch import ArchSpec, BlockSpec
from convsweep.lightning_modules.data.base import ImageData, Split, in_memory_data
from convsweep.lightning_modules.network import ConvNet, build_convnet

EPOCHS = 4
N_TRIALS = 16


def sweep_objective(trial: optuna.Trial, report: bool = True, sign: float = 1.0) -> float:
    """A stand-in for the convsweep objective: conditional per-block params, an invalid depth-3 case.

    `sign=-1` turns the accuracy-like value into a loss-like one (lower is better), reports included.
    """
    depth = trial.suggest_int("depth", 1, 3)
    filters = [trial.suggest_categorical(f"block{i}.filters", [8, 16, 32]) for i in range(1, depth + 1)]
    for i in range(1, depth + 1):
        trial.suggest_categorical(f"block{i}.kernel_size", [3, 5])
    lr = trial.suggest_float("optim.lr", 1e-4, 1e-1, log=True)
    dropout = trial.suggest_float("head.dropout", 0.0, 0.5)
    trial.set_user_attr("mlflow_run_id", f"run-{trial.number:03d}")
    trial.set_user_attr("params_count", 100 * sum(filters))
    trial.set_user_attr("duration_s", 0.5 * depth)
    if depth == 3 and filters[-1] == 8:
        trial.set_user_attr("invalid_reason", "block3: too narrow")
        raise optuna.TrialPruned("invalid architecture")
    final = sign * (0.4 + 0.1 * depth + 0.002 * filters[0] - 0.05 * abs(math.log10(lr) + 2) - 0.2 * dropout)
    for epoch in range(EPOCHS if report else 0):
        trial.report(final * (epoch + 1) / EPOCHS, epoch)
        if trial.should_prune():
            raise optuna.TrialPruned()
    return final


def _make_study(n_trials: int = N_TRIALS, direction: str = "maximize", report: bool = True) -> optuna.Study:
    """A seeded single-objective study; the threshold pruner cuts weak trials after epoch 2.

    A minimising study sees the negated value, so the same trials rank the same way round.
    """
    pruner = (optuna.pruners.ThresholdPruner(lower=0.4, n_warmup_steps=2) if direction == "maximize"
              else optuna.pruners.ThresholdPruner(upper=-0.4, n_warmup_steps=2))
    study = optuna.create_study(direction=direction, sampler=optuna.samplers.RandomSampler(seed=0), pruner=pruner)
    sign = 1.0 if direction == "maximize" else -1.0
    study.optimize(lambda t: sweep_objective(t, report, sign), n_trials=n_trials)
    return study


@pytest.fixture(scope="session")
def make_study() -> Callable[..., optuna.Study]:
    """`make_study(n_trials=16, direction="maximize", report=True)`."""
    return _make_study


@pytest.fixture
def sweep_study() -> optuna.Study:
    """16 trials, val/acc maximised, some COMPLETE and some PRUNED (by the pruner or as invalid)."""
    study = _make_study()
    states = {t.state for t in study.trials}
    assert {optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED} <= states
    return study


@pytest.fixture
def multi_objective_study() -> optuna.Study:
    """(val/acc max, params_count min): the accuracy/size trade-off a Pareto plot is for."""
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # set_metric_names is experimental in Optuna 5
        study.set_metric_names(["val/acc", "params_count"])

    def objective(trial: optuna.Trial) -> tuple[float, float]:
        value = sweep_objective(trial, report=False)
        return value, float(trial.user_attrs["params_count"])

    study.optimize(objective, n_trials=10)
    return study


def _tiny_data(channels: int = 3, n: int = 24, num_classes: int = 4, size: int = 16) -> ImageData:
    """Random uint8 images and labels: enough for every view, nothing to download."""
    gen = torch.Generator().manual_seed(0)

    def split() -> Split:
        images = torch.randint(0, 256, (n, channels, size, size), dtype=torch.uint8, generator=gen)
        return Split(images, torch.randint(0, num_classes, (n,), generator=gen))

    return in_memory_data("tiny", split(), split(), split(), [f"class{i}" for i in range(num_classes)], "generated")


def _tiny_net(data: ImageData, filters: tuple[int, ...] = (6, 12)) -> ConvNet:
    """An untrained ConvNet with one block per entry of `filters`, seeded."""
    torch.manual_seed(0)
    spec = ArchSpec(blocks=tuple(BlockSpec(f) for f in filters))
    return build_convnet(spec, data.input_shape, data.num_classes, data.mean, data.std)


@pytest.fixture
def tiny_data() -> Callable[..., ImageData]:
    """`tiny_data(channels=3, n=24, num_classes=4, size=16)`."""
    return _tiny_data


@pytest.fixture
def tiny_net() -> Callable[..., ConvNet]:
    """`tiny_net(data, filters=(6, 12))`."""
    return _tiny_net


@pytest.fixture
def run_id(mlflow_client: mlflow.MlflowClient, tmp_path: Path) -> str:
    """A fresh run whose artifacts live under this test's tmp_path."""
    experiment = mlflow_client.create_experiment(f"dashboards-{tmp_path.name}",
                                                 artifact_location=(tmp_path / "artifacts").as_uri())
    return mlflow_client.create_run(experiment).info.run_id


@pytest.fixture
def listed(mlflow_client: mlflow.MlflowClient, run_id: str) -> Callable[[str], set[str]]:
    """`listed("plots")`: the artifact paths MLflow lists for `run_id` under a folder."""

    def paths(folder: str) -> set[str]:
        return {a.path for a in mlflow_client.list_artifacts(run_id, folder)}

    return paths


@pytest.fixture
def read_artifact(mlflow_client: mlflow.MlflowClient, run_id: str, tmp_path: Path) -> Callable[[str], str]:
    """`read_artifact("plots/notes.txt")`: download one text artifact of `run_id` and read it."""

    def read(path: str) -> str:
        return Path(mlflow_client.download_artifacts(run_id, path, str(tmp_path / "downloads"))).read_text()

    return read
