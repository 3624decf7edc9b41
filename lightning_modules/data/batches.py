"""Device-resident batches: the data path that keeps small-CNN trials fast.

A split is copied to the training device once per process (`to_device`, cached), then every
batch is a gather on the device: no DataLoader, no per-sample Python, no host-to-device
copy per step. Augmentation is batched on the device too. Splits that do not fit fall back
to a DataLoader with workers and pinned memory behind the same iterator interface.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import DataLoader

from convsweep.lightning_modules.data.base import Augment, Split

Batch = tuple[torch.Tensor, torch.Tensor]  # uint8 (B, C, H, W) images, int64 (B,) labels

# The one per-process cache besides the loaded datasets: (id(split tensor), device) -> (source, device copy).
# The source is kept so an id reused by a freed tensor can never return another tensor's copy.
_DEVICE_CACHE: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a split tensor to `device` once per process; later trials reuse the copy."""
    key = (id(tensor), str(device))
    cached = _DEVICE_CACHE.get(key)
    if cached is None or cached[0] is not tensor:
        cached = (tensor, tensor.to(device, non_blocking=False))
        _DEVICE_CACHE[key] = cached
    return cached[1]


def augment_batch(x: torch.Tensor, augment: Augment, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip, per sample, batched on x's device.

    Args:
        x: (B, C, H, W) images, any dtype; the output keeps shape and dtype.
        augment: what to apply.
        generator: seeded generator on x's device.
    """
    b, _, h, w = x.shape
    if augment.crop_padding > 0:
        p = augment.crop_padding
        padded = torch.nn.functional.pad(x, (p, p, p, p))
        oy = torch.randint(0, 2 * p + 1, (b, 1), device=x.device, generator=generator)
        ox = torch.randint(0, 2 * p + 1, (b, 1), device=x.device, generator=generator)
        rows = (oy + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
        cols = (ox + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
        batch_idx = torch.arange(b, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[batch_idx, rows, cols].permute(0, 3, 1, 2)  # (B, C, H, W)
    if augment.hflip:
        flip = torch.rand(b, device=x.device, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x.contiguous()


class DeviceBatches:
    """Iterates one split in batches gathered on the device; a new seeded order every epoch.

    Each epoch `e` uses the permutation and augmentation draws of `seed + e`, so two
    iterators built with the same arguments yield identical batches.
    """

    def __init__(self, split: Split, batch_size: int, device: torch.device | str, *, shuffle: bool,
                 augment: Augment | None = None, seed: int = 0, drop_last: bool = False) -> None:
        assert split.in_memory, "DeviceBatches needs an in-memory split"
        self.device = torch.device(device)
        self.images = to_device(split.images, self.device)  # type: ignore[arg-type]
        self.labels = to_device(split.labels, self.device)  # type: ignore[arg-type]
        self.batch_size = int(batch_size)
        self.shuffle, self.augment, self.seed, self.drop_last = shuffle, augment or Augment(), seed, drop_last
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _generator(self) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(self.seed + self.epoch)

    def __iter__(self) -> Iterator[Batch]:
        gen = self._generator()
        n = len(self.labels)
        order = torch.randperm(n, device=self.device, generator=gen) if self.shuffle else None
        self.epoch += 1
        augment = self.augment.crop_padding > 0 or self.augment.hflip
        for i in range(len(self)):
            sl = slice(i * self.batch_size, min((i + 1) * self.batch_size, n))
            if order is None:
                x, y = self.images[sl], self.labels[sl]
            else:
                idx = order[sl]
                x, y = self.images.index_select(0, idx), self.labels.index_select(0, idx)
            yield (augment_batch(x, self.augment, gen) if augment else x), y


class LoaderBatches:
    """The fallback for splits too large for device memory: a DataLoader with workers and
    pinned memory, batches copied asynchronously and augmented on the device like `DeviceBatches`."""

    def __init__(self, split: Split, batch_size: int, device: torch.device | str, *, shuffle: bool,
                 augment: Augment | None = None, seed: int = 0, num_workers: int = 2) -> None:
        self.device = torch.device(device)
        self.augment, self.seed, self.epoch = augment or Augment(), seed, 0
        self.loader = DataLoader(split.dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                                 pin_memory=self.device.type == "cuda", persistent_workers=num_workers > 0,
                                 generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        gen = torch.Generator(device=self.device).manual_seed(self.seed + self.epoch)
        self.loader.generator.manual_seed(self.seed + self.epoch)  # type: ignore[union-attr]
        self.epoch += 1
        augment = self.augment.crop_padding > 0 or self.augment.hflip
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            yield (augment_batch(x, self.augment, gen) if augment else x), y


def make_batches(split: Split, batch_size: int, device: torch.device | str, *, train: bool,
                 augment: Augment | None = None, seed: int = 0, num_workers: int = 2) -> DeviceBatches | LoaderBatches:
    """The iterator for one split: device-resident when the split is in memory, else a DataLoader.

    Training batches are shuffled and augmented; evaluation batches are neither.
    """
    kwargs = dict(shuffle=train, augment=augment if train else None, seed=seed)
    if split.in_memory:
        return DeviceBatches(split, batch_size, device, **kwargs)
    return LoaderBatches(split, batch_size, device, num_workers=num_workers, **kwargs)
