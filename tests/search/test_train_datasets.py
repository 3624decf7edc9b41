"""`convsweep train` end to end on torchvision's on-disk layout and on the DataLoader fallback."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from convsweep.search import run_records as tracking
from convsweep.search.cli import main
from convsweep.search.storage import resolve_locations
from tests.lightning_modules.test_datasets import make_folder, write_fake_mnist


def trained_runs(run_dir: Path, experiment: str) -> list:
    client = MlflowClient(resolve_locations({"run_dir": str(run_dir)}).mlflow_uri)
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], filter_string=f"tags.`{tracking.ROLE}` = 'train'")


@pytest.mark.slow
def test_fashion_mnist_trains_from_local_files(tmp_path: Path) -> None:
    write_fake_mnist(tmp_path / "data", "FashionMNIST", n_train=300, n_test=60)
    assert main(["train", "dataset=fashion_mnist", f"dataset.root={tmp_path / 'data'}", "dataset.download=false",
                 "trainer.max_epochs=1", f"tracking.run_dir={tmp_path / 'runs'}"]) == 0
    [run] = trained_runs(tmp_path / "runs", "convsweep-fashion_mnist")
    assert run.data.tags["data.name"] == "fashion_mnist" and run.data.tags["data.n_train"] == "270"
    assert "val/acc" in run.data.metrics


@pytest.mark.slow
def test_image_folder_too_large_for_memory_trains_through_the_dataloader_fallback(tmp_path: Path) -> None:
    make_folder(tmp_path / "pets", {"cat": "RGB", "dog": "RGB", "owl": "L"}, n=12)
    assert main(["train", "dataset=image_folder", f"dataset.root={tmp_path / 'pets'}", "dataset.image_size=16",
                 "dataset.max_device_bytes=1", "dataset.num_workers=0", "trainer.max_epochs=1",
                 f"tracking.run_dir={tmp_path / 'runs'}"]) == 0
    [run] = trained_runs(tmp_path / "runs", "convsweep-image_folder")
    assert run.data.tags["data.name"] == "image_folder" and "val/acc" in run.data.metrics
