"""Config composition, the typed schema, configs read back as data, the `_target_` allow-list and secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from convsweep.errors import ConvsweepError
from convsweep.search.compose import available, compose_config
from convsweep.search.readback import load_config_file
from convsweep.search.allowlist import safe_instantiate
from convsweep.search.masking import mask_uri, to_yaml
from convsweep.search.schema import untyped_keys
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
    ("/tmp/runs/optuna-journal.log", "/tmp/runs/optuna-journal.log"),
    ("postgresql://u:se/cr:et@db:5432/optuna", "postgresql://u:***@db:5432/optuna"),  # `/` and `:` in a password
    ("postgresql://u:p@ss@db/optuna", "postgresql://u:***@db/optuna"),  # an unescaped `@`
    ("postgresql://u@db/optuna?password=se/c@ret&sslmode=require", "postgresql://u@db/optuna?password=***&sslmode=require"),
    ("http://u:pa/ss@mlflow:5000", "http://u:***@mlflow:5000"),
    ("OperationalError: cannot reach postgresql://u:hunter2@127.0.0.1:1/db (timeout)",
     "OperationalError: cannot reach postgresql://u:***@127.0.0.1:1/db (timeout)"),  # a URI inside a message
])
def test_uris_are_masked(uri: str, masked: str) -> None:
    assert mask_uri(uri) == masked


def test_a_config_written_for_reuse_leaves_passwords_out_and_takes_them_from_the_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "postgresql://u:se/cr@t@db:5432/optuna"
    cfg = compose_config(["dataset=digits", f"tracking.optuna_storage={secret}", "tracking.mlflow_uri=http://mlflow:5000"])
    written = tmp_path / "best.yaml"
    written.write_text(to_yaml(cfg, omit_secrets=True))
    text = written.read_text()
    assert "se/cr@t" not in text and "***" not in text and "optuna_storage" not in text
    assert "http://mlflow:5000" in text  # a URI without a password is kept
    monkeypatch.setenv("CONVSWEEP_OPTUNA_STORAGE", secret)
    assert load_config_file(written).tracking.optuna_storage == secret
    assert load_config_file(written, [f"tracking.optuna_storage={secret}x"]).tracking.optuna_storage == secret + "x"
    masked = tmp_path / "masked.yaml"
    masked.write_text(to_yaml(cfg))  # what a logged config.yaml holds: usable to read, not to connect
    with pytest.raises(ConvsweepError, match=r"tracking.optuna_storage: holds a masked password .*CONVSWEEP_OPTUNA_STORAGE"):
        load_config_file(masked)


def test_every_key_of_every_shipped_option_has_a_type_in_the_schema() -> None:
    # sampler, pruner, search_space and arch fill sections typed as mappings, checked by their own builders
    for group in ("dataset", "trainer", "tracking", "experiment"):
        for option in available(group):
            extra = ["dataset.root=/data"] if option == "image_folder" else []
            assert untyped_keys(compose_config([f"{group}={option}", *extra])) == [], f"{group}={option}"


@pytest.mark.parametrize(("override", "key", "value"), [
    ("trainer.deterministic=true", "trainer.deterministic", True),  # an `auto` key takes a bool
    ("trainer.cuda_graphs=false", "trainer.cuda_graphs", False),
    ("trainer.val_batch_size=512", "trainer.val_batch_size", 512),
    ("search.timeout=600", "search.timeout", 600),
    ("search.timeout=null", "search.timeout", None),
    ("trainer.limit_train_batches=0.5", "trainer.limit_train_batches", 0.5),
])
def test_typed_values_are_accepted(override: str, key: str, value: object) -> None:
    assert OmegaConf.select(compose_config([override]), key) == value


@pytest.mark.parametrize(("override", "message"), [
    ("search.timeout=abc", "search.timeout must be a number > 0, or null (got 'abc')"),
    ("search.seed=null", "search.seed must be an integer (got None)"),
    ("trainer.deterministic=maybe", "trainer.deterministic must be auto, true or false (got 'maybe')"),
    ("trainer.max_epochs=true", "trainer.max_epochs must be an integer >= 1 (got True)"),
    ("search.log_models=some", "search.log_models must be best, all or none (got 'some')"),
    ("search.fail_on_collapse=crash", "search.fail_on_collapse must be pruned or failed (got 'crash')"),
    ("search.direction=up", "search.direction must be maximize or minimize (got 'up')"),
    ("dataset.augment.hflip=3", "dataset.augment.hflip must be true or false (got 3)"),
    ("optim.optimizer=lbfgs", "optim: optimizer='lbfgs' is not one of adamw, adam, sgd"),
])
def test_bad_values_name_the_key_and_what_it_takes(override: str, message: str) -> None:
    with pytest.raises(ConvsweepError) as info:
        compose_config([override])
    assert str(info.value) == message


def test_run_dir_holds_every_default_location(tmp_path: Path) -> None:
    loc = resolve_locations({"run_dir": str(tmp_path)})
    assert loc.optuna_url == str(tmp_path / "optuna-journal.log") and loc.is_journal
    assert loc.mlflow_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert loc.artifact_location == (tmp_path / "mlartifacts").as_uri()
