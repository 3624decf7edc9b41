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


def scaled_augment(augment: Augment, strength: float = 1.0) -> tuple[int, float]:
    """(crop padding in pixels, flip probability) of `augment` scaled by `strength`.

    Padding is the dataset's x strength, rounded; the flip probability is 0.5 x min(strength, 1)
    where the dataset flips at all. Strength 0 turns both off, 1 is the dataset's own setting.
    """
    strength = max(float(strength), 0.0)
    return int(round(augment.crop_padding * strength)), (0.5 * min(strength, 1.0) if augment.hflip else 0.0)


def draw_augment(n: int, padding: int, flip_p: float, generator: torch.Generator,
                 device: torch.device) -> torch.Tensor:
    """Crop offsets and flips for `n` samples: int64 (3, n), rows dy, dx in [0, 2 * padding] and flip (0/1)."""
    rows = [torch.randint(0, 2 * padding + 1, (2, n), device=device, generator=generator) if padding
            else torch.zeros(2, n, dtype=torch.long, device=device)]
    flip = torch.rand(n, device=device, generator=generator) < flip_p if flip_p else torch.zeros(n, dtype=torch.bool, device=device)
    return torch.cat([*rows, flip.long()[None]])


def apply_augment(x: torch.Tensor, draws: torch.Tensor, padding: int, flips: bool) -> torch.Tensor:
    """Crop and flip each sample as `draws` (int64 (3, B): dy, dx, flip) says.

    Only indexing and `where`: no host sync and no RNG, so it can run inside a captured CUDA
    graph. x: (B, C, H, W), any dtype; the output keeps shape and dtype.
    """
    b, _, h, w = x.shape
    if padding > 0:
        padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
        rows = (draws[0, :, None] + torch.arange(h, device=x.device))[:, :, None]  # (B, H, 1)
        cols = (draws[1, :, None] + torch.arange(w, device=x.device))[:, None, :]  # (B, 1, W)
        batch_idx = torch.arange(b, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[batch_idx, rows, cols].permute(0, 3, 1, 2)  # (B, C, H, W)
    if flips:
        x = torch.where(draws[2, :, None, None, None].bool(), x.flip(3), x)
    # A copy in plain NCHW strides: with one channel the gather's (B*H*W, 1, W, 1) strides pass for
    # contiguous, convs take oneDNN's channels-last path, and its backward of a strided 1x1 conv (a
    # residual projection) corrupted the heap (torch 2.14 CPU: sweeps on digits/shapes segfaulted).
    return x.clone(memory_format=torch.contiguous_format)


def augment_batch(x: torch.Tensor, augment: Augment, generator: torch.Generator, strength: float = 1.0) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip, per sample, batched on x's device.

    Args:
        x: (B, C, H, W) images, any dtype; the output keeps shape and dtype.
        augment: what to apply.
        generator: seeded generator on x's device.
        strength: scales the augmentation (see `scaled_augment`).
    """
    padding, flip_p = scaled_augment(augment, strength)
    if not padding and not flip_p:
        return x
    return apply_augment(x, draw_augment(len(x), padding, flip_p, generator, x.device), padding, flip_p > 0)


def epoch_plan(n: int, generator: torch.Generator, device: torch.device, *, shuffle: bool,
               augment: Augment | None = None, strength: float = 1.0) -> torch.Tensor:
    """One epoch's batch plan, drawn in one go on the device: int64 (4, n).

    Row 0 is the sample order (a seeded permutation, or 0..n-1), rows 1-3 the augmentation
    draws (dy, dx, flip) for the sample at that position. Batch i is columns
    [i * B, (i + 1) * B), which `gather_batch` turns into images.
    """
    order = torch.randperm(n, device=device, generator=generator) if shuffle else torch.arange(n, device=device)
    padding, flip_p = scaled_augment(augment or Augment(), strength)
    return torch.cat([order[None], draw_augment(n, padding, flip_p, generator, device)])


def gather_batch(images: torch.Tensor, labels: torch.Tensor, plan: torch.Tensor, padding: int,
                 flips: bool) -> Batch:
    """The batch a plan slice (int64 (4, B)) names, gathered and augmented on the device.

    Safe to capture in a CUDA graph with `plan` as its static input.
    """
    x, y = images.index_select(0, plan[0]), labels.index_select(0, plan[0])
    if padding > 0 or flips:
        x = apply_augment(x, plan[1:], padding, flips)
    return x, y


class DeviceBatches:
    """Iterates one split in batches gathered on the device; a new seeded order every epoch.

    Each epoch `e` uses the `epoch_plan` of generator seed `seed + e`, so two iterators built
    with the same arguments yield identical batches, and the same batches as `PlanChunks`.
    """

    def __init__(self, split: Split, batch_size: int, device: torch.device | str, *, shuffle: bool,
                 augment: Augment | None = None, seed: int = 0, drop_last: bool = False,
                 strength: float = 1.0) -> None:
        assert split.in_memory, "DeviceBatches needs an in-memory split"
        self.device = torch.device(device)
        self.images = to_device(split.images, self.device)  # type: ignore[arg-type]
        self.labels = to_device(split.labels, self.device)  # type: ignore[arg-type]
        self.batch_size = int(batch_size)
        self.shuffle, self.augment, self.seed, self.drop_last = shuffle, augment or Augment(), seed, drop_last
        self.strength = float(strength)
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def next_plan(self) -> torch.Tensor:
        """The next epoch's plan (int64 (4, N), see `epoch_plan`); advances the epoch."""
        gen = torch.Generator(device=self.device).manual_seed(self.seed + self.epoch)
        self.epoch += 1
        return epoch_plan(len(self.labels), gen, self.device, shuffle=self.shuffle, augment=self.augment,
                          strength=self.strength)

    def __iter__(self) -> Iterator[Batch]:
        b = self.batch_size
        padding, flip_p = scaled_augment(self.augment, self.strength)
        if not self.shuffle and not padding and not flip_p:
            self.epoch += 1
            for i in range(len(self)):  # evaluation: views in split order, no gather
                yield self.images[i * b:(i + 1) * b], self.labels[i * b:(i + 1) * b]
            return
        for cols in self.plans():
            yield gather_batch(self.images, self.labels, cols, padding, flip_p > 0)

    def plans(self) -> Iterator[torch.Tensor]:
        """The next epoch's batches as plan slices (int64 (4, b), views of one `epoch_plan`)."""
        plan, n, b = self.next_plan(), len(self.labels), self.batch_size
        for i in range(len(self)):
            yield plan[:, i * b:min((i + 1) * b, n)]


class LoaderBatches:
    """The fallback for splits too large for device memory: a DataLoader with workers and
    pinned memory, batches copied asynchronously and augmented on the device like `DeviceBatches`."""

    def __init__(self, split: Split, batch_size: int, device: torch.device | str, *, shuffle: bool,
                 augment: Augment | None = None, seed: int = 0, num_workers: int = 2, strength: float = 1.0) -> None:
        self.device = torch.device(device)
        self.augment, self.seed, self.epoch, self.strength = augment or Augment(), seed, 0, float(strength)
        self.loader = DataLoader(split.dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                                 pin_memory=self.device.type == "cuda", persistent_workers=num_workers > 0,
                                 generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        gen = torch.Generator(device=self.device).manual_seed(self.seed + self.epoch)
        self.loader.generator.manual_seed(self.seed + self.epoch)  # type: ignore[union-attr]
        self.epoch += 1
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            yield augment_batch(x, self.augment, gen, self.strength), y


class StepChunks:
    """A training run as Lightning batches of up to `chunk` optimizer steps each.

    Each item of a chunk is one optimizer step's input: a plan slice (int64 (4, b)) of a
    `DeviceBatches`, or a loaded (x, y) batch of a `LoaderBatches`. Chunking spreads
    Lightning's per-batch hook dispatch over several steps. An epoch takes at most
    `steps_per_epoch` steps, and the run stops after `total_steps`, so the last epoch can be
    cut short. It has no `__len__` on purpose: Lightning then validates when an epoch's
    iterator ends, so a short last epoch is validated too (with a length it validates only
    after that many batches).
    """

    def __init__(self, batches: DeviceBatches | LoaderBatches, chunk: int, steps_per_epoch: int, total_steps: int) -> None:
        self.batches, self.chunk = batches, max(1, int(chunk))
        self.steps_per_epoch, self.total_steps = int(steps_per_epoch), int(total_steps)
        self.done = 0  # optimizer steps handed out so far

    @property
    def chunks_per_epoch(self) -> int:
        return -(-self.steps_per_epoch // self.chunk)

    def __iter__(self) -> Iterator[list]:
        steps = min(self.steps_per_epoch, self.total_steps - self.done)
        source = self.batches.plans() if isinstance(self.batches, DeviceBatches) else iter(self.batches)
        chunk: list = []
        for _, item in zip(range(steps), source):
            chunk.append(item)
            self.done += 1
            if len(chunk) == self.chunk:
                yield chunk
                chunk = []
        if chunk:
            yield chunk


def make_batches(split: Split, batch_size: int, device: torch.device | str, *, train: bool,
                 augment: Augment | None = None, seed: int = 0, num_workers: int = 2,
                 strength: float = 1.0) -> DeviceBatches | LoaderBatches:
    """The iterator for one split: device-resident when the split is in memory, else a DataLoader.

    Training batches are shuffled and augmented (scaled by `strength`); evaluation batches are neither.
    """
    kwargs = dict(shuffle=train, augment=augment if train else None, seed=seed, strength=strength)
    if split.in_memory:
        return DeviceBatches(split, batch_size, device, **kwargs)
    return LoaderBatches(split, batch_size, device, num_workers=num_workers, **kwargs)
