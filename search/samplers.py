"""The sampler factory: which Optuna sampler a sweep uses, and a seed that never repeats a resumed sweep."""

from __future__ import annotations

import socket
import warnings
import zlib

import numpy as np
import optuna
from omegaconf import DictConfig, OmegaConf

from convsweep.search.allowlist import safe_instantiate
from convsweep.search.space import SearchSpace

GRID_SAMPLER = "optuna.samplers.BruteForceSampler"  # sampler=grid: walks conditional spaces, every depth
GP_SAMPLER = "optuna.samplers.GPSampler"


def sampler_seed(seed: int, worker: int, n_existing: int, host: str | None = None) -> int:
    """The seed of one worker's sampler, from `search.seed`, the worker index, the trials the study already
    holds and the host.

    A fixed seed would re-propose the same points after a resume (random and start-up trials
    repeat exactly), and on every worker or machine given the same `search.seed`. The same
    command on a fresh study on the same host still gets the same seed, so a sweep stays reproducible.
    """
    host_key = zlib.crc32((host if host is not None else socket.gethostname()).encode())
    return int(np.random.SeedSequence([int(seed), int(worker), int(n_existing), host_key]).generate_state(1)[0])


def make_sampler(cfg: DictConfig, space: SearchSpace, worker: int = 0, n_existing: int = 0) -> optuna.samplers.BaseSampler:
    """The configured sampler, seeded for this worker and the study's current size (see `sampler_seed`).

    Raises:
        SearchSpaceError: sampler=grid on a space with a continuous range.
    """
    node = OmegaConf.create(OmegaConf.to_container(cfg.sampler))
    if node.get("seed") is not None:
        node.seed = sampler_seed(int(node.seed), worker, n_existing)
    if node.get("_target_") == GRID_SAMPLER:
        space.check_finite()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return safe_instantiate(node)
