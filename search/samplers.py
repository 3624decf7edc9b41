"""The sampler factory: which Optuna sampler a sweep uses, seeded per worker."""

from __future__ import annotations

import warnings

import optuna
from omegaconf import DictConfig, OmegaConf

from convsweep.search.allowlist import safe_instantiate
from convsweep.search.space import SearchSpace


def make_sampler(cfg: DictConfig, space: SearchSpace, worker: int = 0) -> optuna.samplers.BaseSampler:
    """The configured sampler; workers get distinct seeds so they do not propose the same points."""
    node = OmegaConf.create(OmegaConf.to_container(cfg.sampler))
    if node.get("seed") is not None:
        node.seed = int(node.seed) + worker
    if node.get("search_space") == "auto":
        node.search_space = space.grid()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return safe_instantiate(node)
