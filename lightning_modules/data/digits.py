"""scikit-learn's bundled 8x8 handwritten digits: real data that needs no download."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from convsweep.lightning_modules.data.base import ImageData, Split, in_memory_data, seeded_split


def load_digits_data(cfg: Mapping[str, Any]) -> ImageData:
    """1,797 images split into train/val/test by the seeded `val_fraction` and `test_fraction`."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    scaled = torch.from_numpy(bunch.images * (255.0 / 16.0))  # (N, 8, 8), ink 0..16 -> 0..255
    images = scaled.round().to(torch.uint8).unsqueeze(1)  # (N, 1, 8, 8)
    labels = torch.from_numpy(bunch.target).long()
    val, test, train = seeded_split(len(labels), (float(cfg["val_fraction"]), float(cfg["test_fraction"])),
                                    int(cfg["seed"]))
    splits = (Split(images[idx], labels[idx]) for idx in (train, val, test))
    return in_memory_data("digits", *splits, class_names=[str(d) for d in range(10)],
                          source="sklearn.datasets.load_digits")
