"""Compose the run config with Hydra's compose API.

The CLI never uses `@hydra.main`: composing explicitly lets one process run several
commands, turns Hydra's errors into one-line `ConvsweepError`s, and keeps Hydra from
changing the working directory or writing output folders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from omegaconf import DictConfig, OmegaConf, open_dict

from convsweep.errors import ConvsweepError

GROUPS = ("dataset", "search_space", "sampler", "pruner", "trainer", "tracking", "arch", "experiment")


def conf_dir() -> Path:
    """The shipped `conf/` folder: beside `search/` in the checkout, and at `convsweep/conf` when installed."""
    folder = Path(__file__).resolve().parent.parent / "conf"  # the same relative place in both layouts
    if (folder / "config.yaml").is_file():
        return folder
    raise ConvsweepError("cannot find convsweep's conf/ folder; reinstall with: pip install -e '.[dev]'")


def available(group: str) -> list[str]:
    """The option names of one config group (the YAML files in conf/<group>/)."""
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def _explain(exc: Exception, overrides: Iterable[str]) -> str:
    """Turn a Hydra composition error into one line that says how to fix it."""
    messages = [str(e).strip() for e in (exc, exc.__cause__, exc.__context__) if e is not None and str(e).strip()]
    text = " ".join(messages[0].split()) if messages else type(exc).__name__
    if "Error parsing override" in text:
        return f"{text}; overrides look like key=value (e.g. search.n_trials=30) or group=option (e.g. dataset=digits)"
    for item in overrides:
        key, _, value = item.lstrip("+~").partition("=")
        if key in GROUPS and value and f"'{key}/{value}'" in str(exc) or (key in GROUPS and value and value not in available(key)):
            return f"unknown {key} '{value}'; choose one of: {', '.join(available(key))}"
    if "Could not override" in text:
        key = text.split("'")[1] if text.count("'") >= 2 else "?"
        return f"unknown config key '{key}'; check its spelling (`convsweep config` prints every key)"
    return text


def compose_config(overrides: Iterable[str] = (), config_name: str = "config") -> DictConfig:
    """Compose conf/config.yaml with Hydra overrides, resolved and type-checked, with the chosen group options
    in `choices`.

    Raises:
        ConvsweepError: an unknown group option or key, a malformed override, a missing required value, or a
            value of the wrong type.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides)
    try:
        cfg = _hydra_compose(config_name, overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise ConvsweepError(_explain(exc, overrides)) from None
    choices = {k: v for k, v in OmegaConf.to_container(cfg.hydra.runtime.choices).items() if not k.startswith("hydra")}
    with open_dict(cfg):
        del cfg["hydra"]
        cfg["choices"] = choices
    return finalize(cfg)


def _hydra_compose(config_name: str, overrides: list[str]) -> DictConfig:
    """One Hydra compose of the shipped conf/, with the hydra node kept and Hydra's global state cleared."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(conf_dir()), version_base="1.3", job_name="convsweep"):
            return compose(config_name, overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


def finalize(cfg: DictConfig) -> DictConfig:
    """Resolve interpolations, refuse missing required values (`???`) with the key to set, and check every
    value against the typed schema (search/schema.py)."""
    from convsweep.search.schema import check_config

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConvsweepError(f"{missing[0]} is required; set it on the command line, e.g. {missing[0]}=/path/to/data")
    try:
        OmegaConf.resolve(cfg)
    except Exception as exc:  # an interpolation to a missing key or env var
        raise ConvsweepError(f"cannot resolve the config: {str(exc).splitlines()[0]}") from None
    check_config(cfg)
    return cfg


