"""The CUDA fast path: device-resident batches, bf16 autocast, channels_last, and training steps
replayed from a CUDA graph. Runs only with `-m gpu`.

Written without a GPU in the session that added the graph tests: they have not been run yet.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest
import torch
from mlflow.tracking import MlflowClient
from rich.console import Console

from convsweep.lightning_modules import cuda_graphs
from convsweep.lightning_modules.data import load_dataset, make_batches
from convsweep.lightning_modules.data.batches import DeviceBatches
from convsweep.lightning_modules.runner import train_model
from convsweep.lightning_modules.train_step import autocast_dtype
from convsweep.search.compose import compose_config
from convsweep.search.preflight import prepare_sweep
from convsweep.search.storage import resolve_locations
from convsweep.search.studies import ensure_study_exists
from convsweep.search.sweep import run_sweep
from convsweep.search.train import specs_from_config

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def trial(optimizer: str = "adamw", *overrides: str, **optim: Any) -> Any:
    """The default config (shapes, arch small) for 2 deterministic epochs on CUDA."""
    cfg = compose_config(["trainer.max_epochs=2", "trainer.deterministic=true", *overrides])
    data = load_dataset(cfg.dataset)
    arch, spec = specs_from_config(cfg)
    lr = 0.05 if optimizer == "sgd" else spec.lr
    spec = dataclasses.replace(spec, optimizer=optimizer, lr=lr, **optim)
    return train_model(data, arch, spec, cfg.trainer, seed=0)


def test_batches_live_on_the_gpu_and_keep_uint8() -> None:
    data = load_dataset(compose_config([]).dataset)
    batches = make_batches(data.train, 256, "cuda", train=True, augment=data.augment, seed=0)
    assert isinstance(batches, DeviceBatches) and batches.images.is_cuda
    x, y = next(iter(batches))
    assert x.is_cuda and y.is_cuda and x.dtype == torch.uint8


def test_a_trial_trains_on_cuda_in_bf16_from_a_graph_and_reproduces() -> None:
    assert autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16
    first, again = trial(), trial()
    assert first.device == "cuda" and first.cuda_graphs and first.fallback_reason is None
    assert first.best_value > 0.3
    assert [r["val/acc"] for r in again.history] == pytest.approx([r["val/acc"] for r in first.history], abs=1e-6)


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd"])
def test_graph_replay_gives_the_eager_epochs_within_bf16_tolerance(optimizer: str) -> None:
    graphed, eager = trial(optimizer, "trainer.cuda_graphs=true"), trial(optimizer, "trainer.cuda_graphs=false")
    assert graphed.cuda_graphs and not eager.cuda_graphs and graphed.steps == eager.steps
    for g, e in zip(graphed.history, eager.history):
        assert g["val/acc"] == pytest.approx(e["val/acc"], abs=0.02)
        assert g["train/loss"] == pytest.approx(e["train/loss"], rel=0.02, abs=0.01)
        assert g["val/loss"] == pytest.approx(e["val/loss"], rel=0.02, abs=0.01)


def test_dropout_schedules_and_clipping_capture_and_learn() -> None:
    result = trial("adamw", "arch.head.dropout=0.2", "trainer.gradient_clip_val=1.0", schedule="onecycle",
                   label_smoothing=0.1)
    assert result.cuda_graphs and result.best_value > 0.3


def test_a_capture_that_fails_on_the_device_falls_back_and_the_trial_goes_on(monkeypatch) -> None:
    real = cuda_graphs.capture_graph

    def syncing_capture(fn: Callable[[], None], device: torch.device) -> Callable[[], None]:
        def step_that_syncs() -> None:
            fn()
            torch.zeros(1, device=device).item()  # a host sync: not allowed while capturing
        return real(step_that_syncs, device)

    monkeypatch.setattr(cuda_graphs, "capture_graph", syncing_capture)
    result = trial("adamw", "trainer.cuda_graphs=true")
    assert not result.cuda_graphs and result.fallback_reason
    assert result.best_value > 0.3 and len(result.history) == 2
    torch.zeros(4, device="cuda").sum().item()  # the device is still usable after the failed capture


def test_a_sweeps_trials_record_cuda_and_graphs(tmp_path: Path) -> None:
    cfg = compose_config(["dataset=digits", "search.study_name=gpu", "search.n_trials=2", "trainer.max_epochs=2",
                          "pruner=none", "search_space.depth.high=2", f"tracking.run_dir={tmp_path / 'runs'}"])
    plan = prepare_sweep(cfg)
    assert plan.cfg.search.ask_ahead is True  # auto: on for CUDA
    run_sweep(plan, Console(quiet=True))
    loc = resolve_locations(cfg.tracking)
    trials = ensure_study_exists(loc, "gpu").trials
    assert trials and all(t.state.is_finished() for t in trials)  # ask-ahead leaves no trial waiting
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert done and all(t.user_attrs["device"] == "cuda" and t.user_attrs["cuda_graphs"] is True for t in done)
    client = MlflowClient(loc.mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name(str(cfg.tracking.experiment_name)).experiment_id],
                              filter_string="tags.cuda_graphs = 'True'")
    assert len(runs) == len(done)
