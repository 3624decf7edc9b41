"""From a sweep to a reproducible, registered model: best -> train --config-file -> reproduce -> evaluate."""

from __future__ import annotations

import pickle
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from mlflow.models import Model
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from convsweep.lightning_modules.saved_model import load_logged_net
from convsweep.lightning_modules.data import load_dataset
from convsweep.search import run_records as tracking
from convsweep.search.cli import main
from convsweep.search.compose import compose_config
from convsweep.search.storage import resolve_locations
from convsweep.search.studies import ensure_study_exists
from convsweep.search.train import train_and_track
from tests.search.conftest import tiny_overrides

pytestmark = pytest.mark.slow  # the module's fixture runs a sweep


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """One tiny finished sweep shared by the tests below (they only add runs, never change it)."""
    root = tmp_path_factory.mktemp("repro")
    # no pruner: both trials complete, so every study plot has what it needs
    overrides = tiny_overrides(root / "runs", "repro", "search.n_trials=2", "pruner=none", "sampler=random")
    assert main(["sweep", *overrides]) == 0
    return root, overrides


def storage_args(root: Path) -> list[str]:
    return [f"tracking.run_dir={root / 'runs'}"]


def test_best_exports_a_standalone_config_that_trains_and_reproduces_exactly(swept, capsys) -> None:
    root, overrides = swept
    best_yaml = root / "best.yaml"
    secret = "s3://key:se/cr@t@bucket/artifacts"  # a tracking URI with a password: best.yaml must leave it out
    assert main(["best", "--study", "repro", "-o", str(best_yaml), "--register", "repro-best", *storage_args(root),
                 f"tracking.artifact_location={secret}"]) == 0
    assert "se/cr@t" not in best_yaml.read_text() and "***" not in best_yaml.read_text()
    exported = OmegaConf.load(best_yaml)
    assert "artifact_location" not in exported.tracking and exported.tracking.run_dir == str(root / "runs")
    study = ensure_study_exists(resolve_locations({"run_dir": str(root / "runs")}), "repro")
    best = study.best_trial
    assert exported.arch.blocks[0].kernel_size == best.params["block1.kernel_size"]
    client = MlflowClient(resolve_locations({"run_dir": str(root / "runs")}).mlflow_uri)
    assert str(exported.seed) == client.get_run(best.user_attrs["mlflow_run_id"]).data.params["seed"]
    original = client.get_metric_history(best.user_attrs["mlflow_run_id"], "val/acc")
    [version] = client.search_model_versions("name = 'repro-best'")
    assert version.run_id == best.user_attrs["mlflow_run_id"]

    capsys.readouterr()
    assert main(["train", "--config-file", str(best_yaml)]) == 0
    exp = client.get_experiment_by_name("repro")
    trained = client.search_runs([exp.experiment_id], filter_string=f"tags.`{tracking.ROLE}` = 'train'")
    assert len(trained) == 1
    again = client.get_metric_history(trained[0].info.run_id, "val/acc")
    assert [m.value for m in sorted(again, key=lambda m: m.step)] == \
        pytest.approx([m.value for m in sorted(original, key=lambda m: m.step)], abs=1e-6)

    assert main(["reproduce", "--study", "repro", *storage_args(root)]) == 0
    out = capsys.readouterr().out
    assert "reproduced" in out and "not reproduced" not in out
    repro = client.search_runs([exp.experiment_id], filter_string=f"tags.`{tracking.ROLE}` = 'reproduction'")
    assert repro[0].data.tags["convsweep.reproduces"] == best.user_attrs["mlflow_run_id"]
    assert repro[0].data.metrics["reproduce/max_abs_diff"] <= 1e-6


def test_reproduce_refuses_a_changed_dataset_unless_forced(swept, capsys) -> None:
    root, _ = swept
    study = ensure_study_exists(resolve_locations({"run_dir": str(root / "runs")}), "repro")
    run_id = study.trials[0].user_attrs["mlflow_run_id"]
    client = MlflowClient(resolve_locations({"run_dir": str(root / "runs")}).mlflow_uri)
    recorded = client.get_run(run_id).data.tags["data.fingerprint"]
    client.set_tag(run_id, "data.fingerprint", "0" * 64)  # as if the data had changed since the trial
    try:
        capsys.readouterr()
        assert main(["reproduce", run_id, *storage_args(root)]) == 2
        err = capsys.readouterr().err
        assert "dataset 'digits' changed since run" in err and "--force" in err
    finally:
        client.set_tag(run_id, "data.fingerprint", recorded)  # the other tests reproduce this study too


@pytest.mark.parametrize(("args", "message"), [
    (["reproduce", "0123456789abcdef"], "no MLflow run with id 0123456789abcdef"),
    (["best", "--study", "nope"], "no study 'nope'"),
])
def test_reproduce_and_best_errors_are_one_line(swept, capsys, args: list[str], message: str) -> None:
    root, _ = swept
    assert main([*args, *storage_args(root)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_reproduce_refuses_a_run_that_is_not_a_trial(swept, capsys) -> None:
    root, _ = swept
    study = ensure_study_exists(resolve_locations({"run_dir": str(root / "runs")}), "repro")
    assert main(["reproduce", study.user_attrs["mlflow_parent_run_id"], *storage_args(root)]) == 2
    assert "is not a trial" in capsys.readouterr().err


def test_evaluate_logs_the_test_accuracy_of_the_model_it_registers(swept) -> None:
    """The logged test/acc and per-class accuracies match our own count: the registered model's predictions on
    the test split, loaded as a user would load it."""
    root, overrides = swept
    assert main(["evaluate", "--study", "repro", "--register", "repro-cnn", *storage_args(root)]) == 0
    loc = resolve_locations({"run_dir": str(root / "runs")})
    client = MlflowClient(loc.mlflow_uri)
    exp = client.get_experiment_by_name("repro")
    run = client.search_runs([exp.experiment_id], filter_string=f"tags.`{tracking.ROLE}` = 'evaluation'")[0]
    assert run.data.tags["mlflow.parentRunId"] == ensure_study_exists(loc, "repro").user_attrs["mlflow_parent_run_id"]
    [version] = client.search_model_versions("name = 'repro-cnn'")
    assert version.run_id == run.info.run_id

    data = load_dataset(compose_config(overrides).dataset)
    mlflow.set_tracking_uri(loc.mlflow_uri)
    logits = mlflow.pyfunc.load_model("models:/repro-cnn/latest").predict(data.test.images.numpy())  # raw uint8
    labels = data.test.labels.numpy()
    right = np.asarray(logits).argmax(1) == labels
    assert run.data.metrics["test/acc"] == pytest.approx(right.mean(), abs=1e-6)
    for k, name in enumerate(data.class_names):
        assert run.data.metrics[f"test/acc_class/{name}"] == pytest.approx(right[labels == k].mean(), abs=1e-6)


@pytest.fixture
def no_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail on any unpickling: `pickle.load(s)` (cloudpickle uses them too) and `torch.load` without weights_only."""
    real_load = torch.load

    def weights_only_load(*args, **kwargs):
        assert kwargs.get("weights_only") is True, "torch.load without weights_only=True would unpickle"
        return real_load(*args, **kwargs)

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    monkeypatch.setattr(torch, "load", weights_only_load)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


def test_registered_model_is_data_only_and_predicts_like_the_in_memory_model_on_raw_images(swept, tmp_path,
                                                                                          no_pickle) -> None:
    root, overrides = swept
    cfg = compose_config([*overrides, "trainer.max_epochs=1"])
    run = train_and_track(cfg, registered_name="repro-registry")
    mlflow.set_tracking_uri(resolve_locations(cfg.tracking).mlflow_uri)
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri="models:/repro-registry/latest", dst_path=str(tmp_path)))
    files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
    assert {"data/convnet/weights.pt", "data/convnet/spec.json", "MLmodel"} <= files
    assert not [f for f in files if f.endswith((".pkl", ".pickle", ".pth"))]
    assert set(Model.load(str(folder / "MLmodel")).flavors) == {"python_function"}  # no pytorch (pickled) flavour

    raw = run.data.test.images[:64]  # uint8 pixels, as a caller would pass them: normalisation is inside
    with torch.no_grad():
        expected = run.result.model(raw).numpy()
    pyfunc = mlflow.pyfunc.load_model("models:/repro-registry/latest")  # MLflow's own API
    assert np.array_equal(pyfunc.predict(raw.numpy()), expected)
    with torch.no_grad():
        assert np.array_equal(load_logged_net(folder)(raw).numpy(), expected)  # what the sweep-end views load


def test_sweep_end_views_and_report(swept, capsys, no_pickle) -> None:
    root, _ = swept
    loc = resolve_locations({"run_dir": str(root / "runs")})
    study = ensure_study_exists(loc, "repro")
    client = MlflowClient(loc.mlflow_uri)
    parent = study.user_attrs["mlflow_parent_run_id"]
    best_run = study.best_trial.user_attrs["mlflow_run_id"]

    def listed(run_id: str, folder: str) -> set[str]:
        return {a.path for a in client.list_artifacts(run_id, folder)}

    assert {"plots/optimization_history.png", "plots/report.html",
            "plots/intermediate_values.png"} <= listed(parent, "plots")
    assert {"cnn/filters.png", "cnn/activations.png", "cnn/confusion_matrix.png"} <= listed(best_run, "cnn")
    capsys.readouterr()
    assert main(["report", "--study", "repro", *storage_args(root)]) == 0  # with no_pickle: reads models as data
    out = capsys.readouterr().out
    assert "leaderboard: repro" in out and str(study.best_trial.number) in out
    assert "plots/parallel_coordinate.png" in listed(parent, "plots")


def test_reproduce_exits_nonzero_when_metrics_differ_beyond_the_tolerance(swept, capsys) -> None:
    root, _ = swept
    assert main(["reproduce", "--study", "repro", "--tolerance", "-1", *storage_args(root)]) == 1
    assert "not reproduced" in capsys.readouterr().out


def test_run_without_a_config_artifact_and_study_without_completed_trials_are_one_line_errors(swept, tmp_path, capsys) -> None:
    root, overrides = swept
    loc = resolve_locations({"run_dir": str(root / "runs")})
    client = MlflowClient(loc.mlflow_uri)
    bare = client.create_run(client.get_experiment_by_name("repro").experiment_id, tags={tracking.ROLE: "trial"})
    capsys.readouterr()
    assert main(["reproduce", bare.info.run_id, *storage_args(root)]) == 2
    assert "has no config.yaml artifact" in capsys.readouterr().err
    empty = compose_config([*overrides, "search.study_name=empty", f"tracking.run_dir={tmp_path}"])
    import optuna
    from convsweep.search.storage import open_optuna_storage
    optuna.create_study(study_name="empty", storage=open_optuna_storage(resolve_locations(empty.tracking)))
    assert main(["best", "--study", "empty", f"tracking.run_dir={tmp_path}"]) == 2
    assert "has no completed trials yet" in capsys.readouterr().err
