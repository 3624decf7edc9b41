"""Datasets: `load_dataset(cfg.dataset)` returns an `ImageData` with fixed, seeded splits.

`load_dataset` keeps the one per-process dataset cache: a later trial in the same process that
asks for the same resolved config gets the same `ImageData` object, so its split tensors, and
the device copies keyed by their identity in `batches.py`, are reused instead of rebuilt.
"""

from __future__ import annotations

import importlib
import json
import os
from typing import Any, Callable, Mapping

from convsweep.lightning_modules.data.base import Augment, ImageData, Split
from convsweep.lightning_modules.data.batches import make_batches
from convsweep.errors import DatasetError

__all__ = ["Augment", "ImageData", "Split", "load_dataset", "make_batches"]

# name -> (module, function); imported on first use so that sklearn, torchvision and PIL load only when needed.
_LOADERS: dict[str, tuple[str, str]] = {
    "shapes": ("convsweep.lightning_modules.data.shapes", "load_shapes"),
    "digits": ("convsweep.lightning_modules.data.digits", "load_digits_data"),
    "mnist": ("convsweep.lightning_modules.data.torchvision_sets", "load_torchvision"),
    "fashion_mnist": ("convsweep.lightning_modules.data.torchvision_sets", "load_torchvision"),
    "cifar10": ("convsweep.lightning_modules.data.torchvision_sets", "load_torchvision"),
    "image_folder": ("convsweep.lightning_modules.data.image_folder", "load_image_folder"),
}

_CACHE: dict[str, ImageData] = {}  # json of the resolved dataset config -> the loaded data


class _DatasetConfig(dict):
    """The plain dataset config; reading a key it lacks raises a `DatasetError` naming the key."""

    def __missing__(self, key: str) -> Any:
        name = self.get("name")
        raise DatasetError(f"dataset.{key} is not set for dataset {name!r}: add it (see conf/dataset/{name}.yaml)")


def _plain(cfg: Mapping[str, Any]) -> _DatasetConfig:
    """Resolve interpolations, expand `~` in `root`, and check the name."""
    from omegaconf import DictConfig, MissingMandatoryValue, OmegaConf

    try:
        plain = (OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True) if isinstance(cfg, DictConfig)
                 else dict(cfg))
    except MissingMandatoryValue as exc:
        key = f"dataset.{exc.full_key.removeprefix('dataset.')}"
        raise DatasetError(f"{key} is required: set it on the command line, e.g. {key}=...") from exc
    plain = _DatasetConfig(plain)  # type: ignore[arg-type]
    if plain.get("name") not in _LOADERS:
        raise DatasetError(f"unknown dataset {plain.get('name')!r}: use one of {', '.join(_LOADERS)}")
    if plain.get("root") is not None:
        plain["root"] = os.path.expanduser(str(plain["root"]))
    return plain


def _augment(cfg: Mapping[str, Any]) -> Augment:
    try:
        return Augment(**(cfg.get("augment") or {}))
    except TypeError as exc:
        raise DatasetError(f"dataset.augment has an unknown key ({exc}); known: crop_padding, hflip") from exc


def load_dataset(cfg: Mapping[str, Any]) -> ImageData:
    """Load (once per process) the dataset a `dataset:` config group describes.

    Args:
        cfg: the `dataset` group, a DictConfig or a plain mapping; `name` picks the loader.

    Returns:
        The cached `ImageData` when this process already loaded the same resolved config.

    Raises:
        DatasetError: unknown name, missing key, or data that is missing or unreadable.
    """
    plain = _plain(cfg)
    key = json.dumps(plain, sort_keys=True, default=str)
    if key not in _CACHE:
        module, function = _LOADERS[plain["name"]]
        loader: Callable[[Mapping[str, Any]], ImageData] = getattr(importlib.import_module(module), function)
        augment = _augment(plain)
        data = loader(plain)
        data.augment = augment
        empty = [split for split in ("train", "val") if len(getattr(data, split)) == 0]
        if empty:
            raise DatasetError(f"dataset '{data.name}' has an empty {empty[0]} split {data.sizes()}; "
                               "add images or raise its size / fraction settings (a sweep needs both)")
        _CACHE[key] = data
    return _CACHE[key]
