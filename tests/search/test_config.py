"""Config composition, configs read back as data, the `_target_` allow-list and URI masking."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from convsweep.errors import ConvsweepError
from convsweep.search.compose import compose_config
from convsweep.search.readback import load_config_file
from convsweep.search.allowlist import safe_instantiate
from convsweep.search.masking import mask_uri
from convsweep.search.storage import resolve_locations


def test_every_group_is_composed_and_overridable() -> None:
    cfg = compose_config(["dataset=digits", "search.n_trials=30", "sampler=random", "pruner=hyperband",
                          "trainer.max_epochs=8"])
    assert cfg.choices.dataset == "digits" and cfg.choices.sampler == "random"
    assert cfg.search.n_trials == 30 and cfg.pruner.max_resource == 8  # interpolation resolved
    assert cfg.search.study_name == "convsweep-digits"
    assert {"dataset", "search_space", "sampler", "pruner", "trainer", "tracking", "search"} <= set(cfg)


def test_experiment_overlay_applies_last() -> None:
    cfg = compose_config(["experiment=quick"])
    assert cfg.search.n_trials == 3 and cfg.trainer.max_epochs == 2


def test_config_file_is_data_checked_against_the_schema(tmp_path: Path) -> None:
    cfg = compose_config(["dataset=digits"])
    good = tmp_path / "good.yaml"
    good.write_text(OmegaConf.to_yaml(cfg))
    assert load_config_file(good, ["trainer.max_epochs=1"]).trainer.max_epochs == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(OmegaConf.to_yaml(cfg).replace("max_epochs:", "max_epoch:"))
    with pytest.raises(ConvsweepError, match="max_epoch"):
        load_config_file(bad)
    with pytest.raises(ConvsweepError, match="does not exist"):
        load_config_file(tmp_path / "missing.yaml")


def test_only_allow_listed_targets_are_instantiated(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    hostile = OmegaConf.create({"_target_": "os.system", "command": f"touch {marker}"})
    with pytest.raises(ConvsweepError, match="refusing to instantiate _target_ 'os.system'"):
        safe_instantiate(hostile)
    assert not marker.exists()
    assert type(safe_instantiate(compose_config([]).pruner)).__name__ == "MedianPruner"


@pytest.mark.parametrize(("uri", "masked"), [
    ("postgresql://user:s3cret@db.example:5432/optuna", "postgresql://user:***@db.example:5432/optuna"),
    ("postgresql+psycopg://u:p%40ss@127.0.0.1/x", "postgresql+psycopg://u:***@127.0.0.1/x"),
    ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
])
def test_uris_are_masked(uri: str, masked: str) -> None:
    assert mask_uri(uri) == masked


def test_run_dir_holds_every_default_location(tmp_path: Path) -> None:
    loc = resolve_locations({"run_dir": str(tmp_path)})
    assert loc.optuna_url == str(tmp_path / "optuna-journal.log") and loc.is_journal
    assert loc.mlflow_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert loc.artifact_location == (tmp_path / "mlartifacts").as_uri()
