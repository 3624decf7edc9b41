"""The `_target_` allow-list: what a config, possibly read back from a store, may instantiate."""

from __future__ import annotations

from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

from convsweep.errors import ConvsweepError

# The only `_target_`s a config may instantiate: the project's own sampler and pruner builders.
# A config read back from a tracking store is data, so anything else is refused.
ALLOWED_TARGETS = frozenset({
    "optuna.samplers.TPESampler", "optuna.samplers.RandomSampler", "optuna.samplers.GPSampler",
    "optuna.samplers.BruteForceSampler", "optuna.samplers.NSGAIISampler", "optuna.samplers.QMCSampler",
    "optuna.pruners.MedianPruner", "optuna.pruners.SuccessiveHalvingPruner", "optuna.pruners.HyperbandPruner",
    "optuna.pruners.NopPruner", "optuna.pruners.PercentilePruner", "optuna.pruners.ThresholdPruner",
})


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


