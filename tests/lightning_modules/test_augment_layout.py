"""Augmented batches come out in plain NCHW strides, also with one channel.

With one channel a crop gathered through a channels-last view has strides (H*W, 1, W, 1), which
torch calls contiguous; convs then take oneDNN's channels-last path, whose backward through a
strided 1x1 conv (a residual projection) corrupted the heap on CPU and crashed sweeps on digits.
"""

from __future__ import annotations

import pytest
import torch

from convsweep.lightning_modules.data import Augment
from convsweep.lightning_modules.data.batches import augment_batch


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("augment", [Augment(crop_padding=1, hflip=False), Augment(crop_padding=2, hflip=True),
                                     Augment(crop_padding=0, hflip=True)])
def test_augmented_batches_have_plain_strides(channels: int, augment: Augment) -> None:
    x = torch.randint(0, 256, (16, channels, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = augment_batch(x, augment, torch.Generator().manual_seed(0))
    assert out.stride() == torch.empty(out.shape).stride()  # (C*H*W, H*W, W, 1)
