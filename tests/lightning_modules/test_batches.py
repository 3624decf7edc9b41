"""The batch iterators: each sample once per epoch, seeded order, augmentation that keeps dtype."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from convsweep.lightning_modules.data import Augment, Split, make_batches
from convsweep.lightning_modules.data.batches import (DeviceBatches, LoaderBatches, StepChunks, augment_batch, gather_batch,
                                                      scaled_augment)


def labelled_split(n: int = 50, size: int = 6) -> Split:
    """Labels = arange(n), so the order a batch iterator yields is visible in the labels."""
    images = torch.randint(0, 256, (n, 3, size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return Split(images, torch.arange(n))


def epoch_labels(batches: DeviceBatches | LoaderBatches) -> list[int]:
    return torch.cat([y for _, y in batches]).tolist()


class PairsDataset(Dataset):
    """A lazy split's protocol: (uint8 (C, H, W), int label) per item."""

    def __init__(self, split: Split) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.split.images[i], int(self.split.labels[i])  # type: ignore[index]


def test_training_epochs_visit_every_sample_once_in_a_seeded_order() -> None:
    split = labelled_split()
    batches = make_batches(split, batch_size=8, device="cpu", train=True, seed=3)
    assert isinstance(batches, DeviceBatches) and len(batches) == 7
    first, second = epoch_labels(batches), epoch_labels(batches)
    assert sorted(first) == sorted(second) == list(range(50))
    assert first != second and first != list(range(50))  # reshuffled each epoch
    again = make_batches(split, batch_size=8, device="cpu", train=True, seed=3)
    assert epoch_labels(again) == first and epoch_labels(again) == second
    assert epoch_labels(make_batches(split, batch_size=8, device="cpu", train=True, seed=4)) != first


def test_evaluation_batches_are_in_split_order_and_unaugmented() -> None:
    split = labelled_split()
    batches = make_batches(split, batch_size=16, device="cpu", train=False, augment=Augment(crop_padding=2, hflip=True))
    xs, ys = zip(*batches)
    assert torch.cat(ys).tolist() == list(range(50))
    assert torch.equal(torch.cat(xs), split.images)


def test_drop_last_leaves_out_the_partial_batch() -> None:
    batches = DeviceBatches(labelled_split(), batch_size=8, device="cpu", shuffle=True, drop_last=True)
    assert len(batches) == 6 and len(epoch_labels(batches)) == 48


def test_augmentation_keeps_shape_and_dtype_and_changes_pixels() -> None:
    split = labelled_split(n=64, size=8)
    x = split.images
    out = augment_batch(x, Augment(crop_padding=2, hflip=True), torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    changed = (out != x).flatten(1).any(1)
    assert 0.5 < changed.float().mean() < 1  # most samples moved or flipped; a few drew the identity
    plain = augment_batch(x, Augment(), torch.Generator().manual_seed(0))
    assert torch.equal(plain, x)


def test_training_batches_are_augmented() -> None:
    split = labelled_split(n=32)
    batches = make_batches(split, batch_size=32, device="cpu", train=True, augment=Augment(hflip=True))
    x, y = next(iter(batches))
    originals = split.images[y]
    flipped = (x == originals.flip(3)).flatten(1).all(1)  # (B,) flipped along W
    same = (x == originals).flatten(1).all(1)
    assert bool((flipped | same).all() and flipped.any() and same.any())


def test_lazy_split_goes_through_a_loader_with_the_same_contract() -> None:
    split = labelled_split(n=20)
    lazy = Split(dataset=PairsDataset(split))
    batches = make_batches(lazy, batch_size=6, device="cpu", train=True, seed=1, num_workers=0)
    assert isinstance(batches, LoaderBatches) and len(batches) == 4
    first = epoch_labels(batches)
    assert sorted(first) == list(range(20)) and first != list(range(20))
    again = make_batches(lazy, batch_size=6, device="cpu", train=True, seed=1, num_workers=0)
    assert epoch_labels(again) == first
    x, _ = next(iter(make_batches(lazy, batch_size=6, device="cpu", train=False, num_workers=0)))
    assert x.dtype == torch.uint8 and torch.equal(x, split.images[:6])


def test_augment_strength_scales_padding_and_flip_probability() -> None:
    augment = Augment(crop_padding=2, hflip=True)
    assert scaled_augment(augment, 1.0) == (2, 0.5) and scaled_augment(augment, 0.0) == (0, 0.0)
    assert scaled_augment(augment, 0.5) == (1, 0.25) and scaled_augment(augment, 2.0) == (4, 0.5)
    assert scaled_augment(Augment(crop_padding=1, hflip=False), 1.0) == (1, 0.0)  # never flips what the data forbids
    split = labelled_split(n=32)
    off = make_batches(split, batch_size=32, device="cpu", train=True, augment=augment, strength=0.0)
    x, y = next(iter(off))
    assert torch.equal(x, split.images[y])


def test_device_batches_and_step_chunks_walk_the_same_epoch_plan() -> None:
    split = labelled_split()
    batches = DeviceBatches(split, 8, "cpu", shuffle=True, augment=Augment(crop_padding=1, hflip=True), seed=5)
    twin = DeviceBatches(split, 8, "cpu", shuffle=True, augment=Augment(crop_padding=1, hflip=True), seed=5)
    chunks = StepChunks(twin, chunk=3, steps_per_epoch=len(twin), total_steps=len(twin) + 2)
    first = [plan for chunk in chunks for plan in chunk]
    assert [len(chunk) for chunk in StepChunks(batches, 3, len(batches), 100)] == [3, 3, 1]
    assert [len(plan[0]) for plan in first] == [8] * 6 + [2]  # the ragged last batch is kept: every sample once
    gathered = [gather_batch(twin.images, twin.labels, plan, 1, True) for plan in first]
    for (x, y), (gx, gy) in zip(make_batches(split, 8, "cpu", train=True, augment=Augment(1, True), seed=5), gathered):
        assert torch.equal(x, gx) and torch.equal(y, gy)
    assert sum(len(plan[0]) for chunk in chunks for plan in chunk) == 16  # budget: 2 steps left for epoch 2
