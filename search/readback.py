"""Read configs back as data: standalone files (`best.yaml`) and configs stored with runs.

A config read back from a file or a tracking store is data: it is merged onto the shipped
schema (unknown keys refused) and only ever instantiates the allow-listed builders.
"""

from __future__ import annotations

from pathlib import Path
import tempfile
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf, open_dict

from convsweep.errors import ConvsweepError
from convsweep.search.compose import GROUPS, available, compose_config, finalize


def load_config_file(path: str | Path, overrides: Iterable[str] = ()) -> DictConfig:
    """Read a standalone resolved config (e.g. `best.yaml`) as data, checked against the shipped schema.

    Keys the shipped config does not know are refused, so a typo cannot be silently ignored.
    Overrides use dotted `key=value` form.
    """
    path = Path(path)
    if not path.is_file():
        raise ConvsweepError(f"config file {path} does not exist; write one with `convsweep best --study NAME`")
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:
        raise ConvsweepError(f"{path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(loaded, DictConfig) or "arch" not in loaded or "dataset" not in loaded:
        raise ConvsweepError(f"{path} is not a convsweep config (it needs at least `dataset:` and `arch:`)")
    return merge_onto_schema(loaded, overrides, str(path))


# Sections a read-back config replaces whole. Training never instantiates sampler or pruner
# (and `safe_instantiate` guards them where a sweep does); the rest is merged key by key.
WHOLE_SECTIONS = ("arch", "choices", "search_space", "sampler", "pruner")


def merge_onto_schema(data: DictConfig | dict, overrides: Iterable[str] = (), source: str = "config") -> DictConfig:
    """Merge a config read back as data onto the shipped defaults, refusing unknown keys."""
    from omegaconf.errors import OmegaConfBaseException

    base = compose_config(_stored_choices(data))
    OmegaConf.set_struct(base, True)
    with open_dict(base):
        for key in WHOLE_SECTIONS:  # replaced as a whole: a recorded value, not a patch on the defaults
            if data.get(key) is not None:
                base[key] = data[key]
    try:
        merged = OmegaConf.merge(base, {k: v for k, v in dict(data).items() if k not in WHOLE_SECTIONS})
        merged = OmegaConf.merge(merged, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as exc:
        raise ConvsweepError(f"{source}: {str(exc).splitlines()[0]}") from None
    return finalize(merged)


def _stored_choices(data: DictConfig | dict) -> list[str]:
    """Group overrides that recreate the schema a stored config was composed with (e.g. pruner=hyperband)."""
    choices = dict(data.get("choices") or {})
    if not choices and data.get("dataset", {}).get("name"):
        choices = {"dataset": data["dataset"]["name"]}
    return [f"{group}={option}" for group, option in choices.items()
            if group in GROUPS and option is not None and option in available(group)]




def run_config(client: Any, run_id: str, cfg: DictConfig, source: str | None = None) -> DictConfig:
    """A run's stored `config.yaml` (the one copy of a trial's config), checked against the schema and
    pointed at this command's stores."""
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = client.download_artifacts(run_id, "config.yaml", tmp)
        except (MlflowException, OSError):
            raise ConvsweepError(f"run {run_id} has no config.yaml artifact, so it cannot be re-run") from None
        data = OmegaConf.to_container(OmegaConf.load(path))
    data["tracking"] = OmegaConf.to_container(cfg.tracking)  # where this command reads and writes
    return merge_onto_schema(data, source=source or f"run {run_id}")


def trial_config(client: Any, trial: Any, cfg: DictConfig) -> DictConfig:
    """The stored config of an Optuna trial, read from its MLflow run."""
    run_id = trial.user_attrs.get("mlflow_run_id")
    if not run_id:
        raise ConvsweepError(f"trial {trial.number} has no MLflow run (it was not made by convsweep)")
    return run_config(client, run_id, cfg, f"trial {trial.number}")
