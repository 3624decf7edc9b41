"""The embedded default dataset: noisy grayscale outlines of x, o, square, triangle, plus, diamond.

Measured (seed 0, 6 classes, 3,000 train / 600 val, noise 0.15): logistic regression on raw
pixels reaches about 0.62 val accuracy, a 3-layer CNN about 0.99 after 3 epochs, so the
architecture matters. Position, scale, aspect, rotation (within +-20 degrees, so that a
rotated square never becomes a diamond), stroke width, contrast and noise vary per image.
Each image is rasterised as a distance field on the pixel grid, all images at once: 4,200
28x28 images take under a second on CPU. The result is cached under `<root>/shapes/`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping

import torch

from convsweep.lightning_modules.data.base import ImageData, Split, in_memory_data
from convsweep.errors import DatasetError

log = logging.getLogger(__name__)

SHAPE_NAMES = ("x", "o", "square", "triangle", "plus", "diamond")
_GENERATOR_VERSION = 1  # bump when rendering changes, so stale disk caches are not reused
_RING_RADIUS = 0.85  # the "o" in shape units
_CHUNK = 512  # images rasterised per step: bounds the (n, 4, H*W, 2) temporaries to ~10 MB at 28x28

Segments = list[tuple[tuple[float, float], tuple[float, float]]]


def _polygon(points: list[tuple[float, float]]) -> Segments:
    return [(points[i], points[(i + 1) % len(points)]) for i in range(len(points))]


def _triangle() -> Segments:
    """Equilateral, pointing up, centroid shifted so the outline spans about [-1, 1] vertically."""
    angles = (math.pi / 2, math.pi / 2 + 2 * math.pi / 3, math.pi / 2 + 4 * math.pi / 3)
    return _polygon([(math.cos(a), -math.sin(a) + 0.25) for a in angles])


# Line-drawn shapes in shape units (about [-1, 1]^2, y down); "o" is a ring, drawn separately.
_SEGMENTS: dict[str, Segments] = {
    "x": [((-1.0, -1.0), (1.0, 1.0)), ((-1.0, 1.0), (1.0, -1.0))],
    "square": _polygon([(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]),
    "triangle": _triangle(),
    "plus": [((-1.0, 0.0), (1.0, 0.0)), ((0.0, -1.0), (0.0, 1.0))],
    "diamond": _polygon([(0.0, -1.0), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0)]),
}


def _segment_table(n_classes: int) -> torch.Tensor:
    """(K, 4, 2, 2) segment endpoints per class; shorter lists repeat segments (min distance is unchanged)."""
    table = torch.zeros(n_classes, 4, 2, 2)
    for k, name in enumerate(SHAPE_NAMES[:n_classes]):
        if name in _SEGMENTS:
            table[k] = torch.tensor((_SEGMENTS[name] * 4)[:4])
    return table


def render_shapes(n: int, n_classes: int, size: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw `n` class-balanced images, deterministic in `seed`.

    Args:
        n: number of images.
        n_classes: the first `n_classes` of `SHAPE_NAMES`.
        size: pixels per side.
        noise: std of additive Gaussian pixel noise, in [0, 1] intensity units.
        seed: seeds every random draw.

    Returns:
        uint8 images (n, 1, size, size) and int64 labels (n,).
    """
    g = torch.Generator().manual_seed(seed)

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=g)

    labels = (torch.arange(n) % n_classes)[torch.randperm(n, generator=g)]
    half = size / 2
    scale = uniform(0.4, 0.85) * half  # px per shape unit
    sx, sy = scale * uniform(0.85, 1.15), scale * uniform(0.85, 1.15)
    theta = uniform(-20.0, 20.0) * (math.pi / 180)
    room = (half - torch.maximum(sx, sy) - 1.5).clamp_min(0)  # px the centre may move and keep the shape inside
    centre = torch.stack([room * uniform(-1, 1), room * uniform(-1, 1)], -1)  # (n, 2) px from the image centre
    width, ink, background = uniform(1.0, 3.0), uniform(0.6, 1.0), uniform(0.0, 0.25)  # px, intensity, intensity
    cos, sin = theta.cos(), theta.sin()
    # (n, 2, 2): shape units -> px, scale then rotate
    affine = torch.stack([torch.stack([cos * sx, -sin * sy], -1), torch.stack([sin * sx, cos * sy], -1)], -2)

    coords = torch.arange(size, dtype=torch.float32) + 0.5 - half
    py, px = torch.meshgrid(coords, coords, indexing="ij")
    pixels = torch.stack([px.flatten(), py.flatten()], -1)  # (P, 2) px, P = size * size
    table, ring = _segment_table(n_classes), SHAPE_NAMES.index("o")

    distance = torch.empty(n, size * size)  # px from each pixel to the nearest stroke centre line
    for lo in range(0, n, _CHUNK):
        sl = slice(lo, min(lo + _CHUNK, n))
        a_, c_, y_ = affine[sl], centre[sl], labels[sl]
        ends = torch.einsum("nij,nksj->nksi", a_, table[y_]) + c_[:, None, None, :]  # (n, 4, 2, 2) px
        start, seg = ends[:, :, 0], ends[:, :, 1] - ends[:, :, 0]  # (n, 4, 2)
        rel = pixels[None, None] - start[:, :, None]  # (n, 4, P, 2)
        t = ((rel * seg[:, :, None]).sum(-1) / (seg * seg).sum(-1, keepdim=True).clamp_min(1e-6)).clamp(0, 1)
        d_lines = (rel - t[..., None] * seg[:, :, None]).norm(dim=-1).amin(1)  # (n, P)
        local = torch.linalg.solve(a_, (pixels[None] - c_[:, None]).transpose(1, 2)).transpose(1, 2)  # (n, P, 2)
        d_ring = (local.norm(dim=-1) - _RING_RADIUS).abs() * ((sx[sl] + sy[sl]) / 2)[:, None]
        distance[sl] = torch.where((y_ == ring)[:, None], d_ring, d_lines)

    cover = (width[:, None] / 2 + 0.5 - distance).clamp(0, 1)  # 1 px anti-aliased stroke edge
    image = background[:, None] + (ink - background)[:, None] * cover + noise * torch.randn(n, size * size, generator=g)
    images = (image.clamp(0, 1) * 255).round().to(torch.uint8).view(n, 1, size, size)
    return images, labels


def _cache_path(root: str, params: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps({**params, "v": _GENERATOR_VERSION}, sort_keys=True).encode()).hexdigest()[:16]
    return Path(root) / "shapes" / f"shapes-{key}.pt"


def _read_cache(path: Path) -> dict[str, torch.Tensor] | None:
    if not path.is_file():
        return None
    try:
        return torch.load(path, weights_only=True)
    except Exception as exc:  # a truncated or foreign file: regenerate rather than fail
        log.warning("ignoring unreadable shapes cache %s (%s)", path, exc)
        return None


def _write_cache(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Best effort: a read-only cache folder costs a regeneration next time, never a failed load."""
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(tensors, tmp)
        os.replace(tmp, path)  # atomic: a concurrent worker never reads half a file
    except OSError as exc:
        log.warning("could not cache shapes at %s (%s); they will be regenerated next time", path, exc)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def load_shapes(cfg: Mapping[str, Any]) -> ImageData:
    """Generate (or read from the disk cache) the shapes dataset; the splits are consecutive slices."""
    n_classes = int(cfg["n_classes"])
    if not 4 <= n_classes <= len(SHAPE_NAMES):
        raise DatasetError(f"dataset.n_classes={n_classes} is out of range: shapes has 4 to {len(SHAPE_NAMES)} classes")
    sizes = [int(cfg["n_train"]), int(cfg["n_val"]), int(cfg["n_test"])]
    params = dict(n=sum(sizes), n_classes=n_classes, size=int(cfg["image_size"]), noise=float(cfg["noise"]),
                  seed=int(cfg["seed"]))
    path = _cache_path(cfg["root"], params)
    tensors = _read_cache(path)
    if tensors is None:
        images, labels = render_shapes(**params)
        tensors = {"images": images, "labels": labels}
        _write_cache(path, tensors)
    train, val, test = (Split(x, y) for x, y in zip(tensors["images"].split(sizes), tensors["labels"].split(sizes)))
    return in_memory_data("shapes", train, val, test, list(SHAPE_NAMES[:n_classes]), source=f"generated ({path})")
