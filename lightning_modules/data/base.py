"""The in-memory image dataset every loader returns, and its content fingerprint.

Images are kept as uint8 (N, C, H, W) tensors: 4x smaller than float32, so every dataset
this product ships fits in device memory, and the network's `InputNorm` does the scaling.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset


@dataclass(frozen=True)
class Augment:
    """Batched on-device augmentation settings."""

    crop_padding: int = 0  # pixels of zero padding before a random crop back to size (0 = off)
    hflip: bool = False  # random horizontal flip with p = 0.5


@dataclass
class Split:
    """One split: uint8 images (N, C, H, W) and int64 labels (N,), or a lazy dataset.

    `dataset` is set instead of `images`/`labels` for data too large for device memory; it
    yields (uint8 (C, H, W) tensor, int label) pairs and is served by a DataLoader.
    """

    images: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    dataset: Dataset | None = None

    def __len__(self) -> int:
        return len(self.labels) if self.labels is not None else len(self.dataset)  # type: ignore[arg-type]

    @property
    def in_memory(self) -> bool:
        return self.images is not None


@dataclass
class ImageData:
    """A dataset with fixed, seeded train/val/test splits and what the builder needs to know."""

    name: str
    train: Split
    val: Split
    test: Split
    class_names: list[str]
    input_shape: tuple[int, int, int]  # (C, H, W)
    mean: tuple[float, ...]  # per channel, [0, 1] intensity units, from the train split
    std: tuple[float, ...]
    augment: Augment = field(default_factory=Augment)
    fingerprint: str = ""  # sha256 over all splits' content: reproduce checks it
    source: str = ""  # where it came from (path or "generated"), for the run record
    skipped: tuple[str, ...] = ()  # unreadable files left out, by path (image_folder, on_corrupt=skip)
    loader_workers: int = 2  # DataLoader workers, used only by splits streamed from disk

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def describe(self) -> dict[str, Any]:
        """What a trial run records about its data."""
        return {"name": self.name, "fingerprint": self.fingerprint, "input_shape": list(self.input_shape),
                "num_classes": self.num_classes, "class_names": self.class_names, "source": self.source,
                **{f"n_{k}": v for k, v in self.sizes().items()}}


def fingerprint_tensors(*tensors: torch.Tensor) -> str:
    """sha256 of the tensors' bytes, shapes and dtypes: changes if any pixel or label does."""
    digest = hashlib.sha256()
    for t in tensors:
        t = t.detach().contiguous().cpu()
        digest.update(f"{tuple(t.shape)}{t.dtype}".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 (N, C, H, W) images, in [0, 1] units."""
    x = images.float().div_(255.0)
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3)
    return tuple(round(v, 6) for v in mean.tolist()), tuple(round(v, 6) for v in std.tolist())


def seeded_split(n: int, fractions: tuple[float, ...], seed: int) -> list[torch.Tensor]:
    """Split range(n) into len(fractions)+1 index sets by a seeded permutation; the last takes the rest."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    out, start = [], 0
    for frac in fractions:
        size = int(round(n * frac))
        out.append(perm[start:start + size])
        start += size
    out.append(perm[start:])
    return out


def in_memory_data(name: str, train: Split, val: Split, test: Split, class_names: list[str],
                   source: str) -> ImageData:
    """An `ImageData` over in-memory splits: shape, train-split stats and fingerprint follow from the tensors."""
    splits = (train, val, test)
    mean, std = channel_stats(train.images)  # type: ignore[arg-type]
    return ImageData(name=name, train=train, val=val, test=test, class_names=class_names,
                     input_shape=tuple(train.images.shape[1:]),  # type: ignore[union-attr]
                     mean=mean, std=std, source=source,
                     fingerprint=fingerprint_tensors(*(t for s in splits for t in (s.images, s.labels))))
