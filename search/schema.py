"""Type checks of command-line overrides against the shipped config's types."""

from __future__ import annotations

import functools

from omegaconf import DictConfig, OmegaConf

from convsweep.errors import ConvsweepError
from convsweep.search.compose import GROUPS, _hydra_compose


def check_override_types(cfg: DictConfig, overrides: list[str]) -> None:
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


