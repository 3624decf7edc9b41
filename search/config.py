"""Compose the run config with Hydra's compose API, and read configs back safely.

The CLI never uses `@hydra.main`: composing explicitly lets one process run several
commands, turns Hydra's errors into one-line `ConvsweepError`s, and keeps Hydra from
changing the working directory or writing output folders.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Iterable

from convsweep.errors import ConvsweepError
from omegaconf import DictConfig, OmegaConf, open_dict

GROUPS = ("dataset", "search_space", "sampler", "pruner", "trainer", "tracking", "arch", "experiment")

# The only `_target_`s a config may instantiate: the project's own sampler and pruner builders.
# A config read back from a tracking store is data, so anything else is refused.
ALLOWED_TARGETS = frozenset({
    "optuna.samplers.TPESampler", "optuna.samplers.RandomSampler", "optuna.samplers.GPSampler",
    "optuna.samplers.GridSampler", "optuna.samplers.NSGAIISampler", "optuna.samplers.QMCSampler",
    "optuna.pruners.MedianPruner", "optuna.pruners.SuccessiveHalvingPruner", "optuna.pruners.HyperbandPruner",
    "optuna.pruners.NopPruner", "optuna.pruners.PercentilePruner", "optuna.pruners.ThresholdPruner",
})


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
    """Compose conf/config.yaml with Hydra overrides, resolved, with the chosen group options in `choices`.

    Raises:
        ConvsweepError: an unknown group option or key, a malformed override, or a missing required value.
    """
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    overrides = list(overrides)
    try:
        cfg = _hydra_compose(config_name, overrides)
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise ConvsweepError(_explain(exc, overrides)) from None
    _check_types(cfg, overrides)
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


def _check_types(cfg: DictConfig, overrides: list[str]) -> None:
    """Reject `key=value` overrides whose value type differs from the YAML default (e.g. max_epochs=abc)."""
    from omegaconf.errors import OmegaConfBaseException

    for item in overrides:
        key, eq, _ = item.partition("=")
        if not eq or key.startswith(("+", "~", "search_space.")) or key in GROUPS:
            continue  # the search space has its own validator, which names the file
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=False)
            default = OmegaConf.select(_defaults_for(_choice_overrides(cfg)), key, throw_on_missing=False)
        except OmegaConfBaseException:
            continue
        numeric = (int, float)
        if isinstance(default, bool) != isinstance(value, bool) and default is not None and value is not None:
            raise ConvsweepError(f"{key} must be true or false (got {value!r})")
        if isinstance(default, numeric) and not isinstance(default, bool) and value is not None \
                and not isinstance(value, numeric):
            raise ConvsweepError(f"{key} must be a number (got {value!r})")


def _choice_overrides(cfg: DictConfig) -> tuple[str, ...]:
    """The group options a composed config used, as overrides (e.g. `dataset=digits`)."""
    return tuple(sorted(f"{k}={v}" for k, v in cfg.hydra.runtime.choices.items()
                        if not k.startswith("hydra") and v is not None))


@functools.lru_cache(maxsize=16)
def _defaults_for(choices: tuple[str, ...]) -> DictConfig:
    """The composed config with these group options and no value overrides: the types overrides must keep."""
    return _hydra_compose("config", list(choices))


def finalize(cfg: DictConfig) -> DictConfig:
    """Resolve interpolations and refuse missing required values (`???`) with the key to set."""
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConvsweepError(f"{missing[0]} is required; set it on the command line, e.g. {missing[0]}=/path/to/data")
    try:
        OmegaConf.resolve(cfg)
    except Exception as exc:  # an interpolation to a missing key or env var
        raise ConvsweepError(f"cannot resolve the config: {str(exc).splitlines()[0]}") from None
    return cfg


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


def _targets(node: Any) -> Iterable[Any]:
    """Every `_target_` in a config tree: instantiate recurses, so the allow-list must too."""
    if isinstance(node, DictConfig) or isinstance(node, dict):
        if "_target_" in node:
            yield node["_target_"]
        for value in node.values():
            yield from _targets(value)
    elif isinstance(node, (list, tuple)) or OmegaConf.is_list(node):
        for value in node:
            yield from _targets(value)


def safe_instantiate(node: DictConfig, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate`, but only for `_target_`s on the project's allow-list, at any depth."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    for target in _targets(node):
        if target not in ALLOWED_TARGETS:
            raise ConvsweepError(f"refusing to instantiate _target_ {target!r}: only convsweep's samplers and pruners are allowed")
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        raise ConvsweepError(f"cannot build {node.get('_target_')}: {' '.join(str(cause).split())[:300]}; "
                             "check the sampler/pruner settings") from None


SECRET_URIS = ("optuna_storage", "mlflow_uri", "artifact_location")  # keys under `tracking:` that may hold a password


def safe_container(cfg: DictConfig) -> dict:
    """The resolved config as plain data with passwords in the tracking URIs masked: safe to store anywhere."""
    from convsweep.search.storage import mask_uri

    data = OmegaConf.to_container(cfg, resolve=True)
    tracking = data.get("tracking") if isinstance(data, dict) else None
    for key in SECRET_URIS if isinstance(tracking, dict) else ():
        if tracking.get(key):
            tracking[key] = mask_uri(tracking[key])
    return data


def to_yaml(cfg: DictConfig) -> str:
    """`safe_container` as YAML: what is logged to MLflow or written to disk."""
    return OmegaConf.to_yaml(safe_container(cfg))


def check_metric(cfg: DictConfig) -> None:
    """One metric name feeds pruning, checkpointing, objective and leaderboard: it must exist."""
    from convsweep.lightning_modules.module import METRICS

    metric, direction = str(cfg.search.metric), str(cfg.search.direction)
    if metric not in METRICS:
        raise ConvsweepError(f"unknown metric '{metric}'; search.metric must be one of: {', '.join(METRICS)}")
    if direction not in ("maximize", "minimize"):
        raise ConvsweepError(f"search.direction must be maximize or minimize (got '{direction}')")
    wanted = "maximize" if metric.endswith("acc") else "minimize"
    if direction != wanted:
        raise ConvsweepError(f"search.direction={direction} does not fit {metric}; use search.direction={wanted}")
