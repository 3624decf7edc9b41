"""The user's own images, one sub-folder per class (torchvision's `ImageFolder` layout and discovery), resized with PIL.

Two layouts: `<root>/<class>/*`, split here by the seeded `val_fraction` and `test_fraction`,
or `<root>/train/<class>/*` with optional `val/` and `test/` folders (a missing one is carved
from train). Every file is checked first (header and checksum where the format has one), so an
unreadable image is reported by path before any training, then skipped or fatal (`on_corrupt`).
Datasets whose uint8 pixels exceed `max_device_bytes` stay on disk behind a lazy `Dataset`.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, TypeVar

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.datasets.folder import find_classes, make_dataset

from convsweep.lightning_modules.data.base import ImageData, Split, channel_stats, in_memory_data, seeded_split
from convsweep.errors import DatasetError

log = logging.getLogger(__name__)

# torchvision's IMG_EXTENSIONS plus what else PIL decodes
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif", ".tiff", ".webp")
GRAY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"})  # PIL modes read as one channel
SPLITS = ("train", "val", "test")
_STATS_SAMPLE = 2000  # images the lazy path decodes for the channel mean/std

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Files:
    """One split's image files and their class indices."""

    paths: list[Path]
    labels: list[int]

    def take(self, keep: Iterable[int]) -> _Files:
        keep = list(keep)
        return _Files([self.paths[i] for i in keep], [self.labels[i] for i in keep])


def _parallel(fn: Callable[[T], R], items: list[T]) -> list[R]:
    """PIL releases the GIL while decoding, so threads scale with cores."""
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        return list(pool.map(fn, items))


def read_image(path: Path, size: int, channels: int) -> np.ndarray:
    """Decode, convert to L or RGB, resize to (size, size) bilinearly: uint8 (C, size, size)."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("L" if channels == 1 else "RGB").resize((size, size), Image.Resampling.BILINEAR)
        pixels = np.array(img, dtype=np.uint8)  # a writable copy: torch.from_numpy warns on read-only
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)


def _probe(path: Path) -> str | None:
    """The image's PIL mode, or None when the file is not a readable image (header or checksum fails)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            mode = img.mode
            img.verify()
        return mode
    except Exception:  # PIL raises many types (UnidentifiedImageError, SyntaxError, OSError...) for bad files
        return None


def _try_read(args: tuple[Path, int, int]) -> np.ndarray | None:
    try:
        return read_image(*args)
    except Exception:  # decoding failed past the header check: the file is corrupt
        return None


class FolderDataset(Dataset):
    """Lazy split for datasets too large for device memory: decodes one file per item."""

    def __init__(self, files: _Files, size: int, channels: int) -> None:
        self.files, self.size, self.channels = files, size, channels

    def __len__(self) -> int:
        return len(self.files.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.files.paths[index]
        try:
            pixels = read_image(path, self.size, self.channels)
        except Exception as exc:
            raise DatasetError(f"{path} became unreadable after loading started ({exc}); remove or replace it") from exc
        return torch.from_numpy(pixels), self.files.labels[index]  # uint8 (C, H, W), class index


def _split_folders(root: Path) -> dict[str, Path]:
    """Which folder holds each split's class folders; a single-folder layout is all train."""
    if (root / "train").is_dir():
        return {s: root / s for s in SPLITS if (root / s).is_dir()}
    return {"train": root}


def _class_names(folder: Path) -> list[str]:
    """torchvision's class discovery (sorted sub-folder names), less hidden ones such as `.ipynb_checkpoints`."""
    try:
        names, _ = find_classes(folder)
    except FileNotFoundError:  # torchvision's answer to a folder without sub-folders
        return []
    return [name for name in names if not name.startswith(".")]


def _list_files(folder: Path, class_names: list[str]) -> _Files:
    """Every image under the split's class folders (nested too), labelled by position in `class_names`."""
    samples = make_dataset(folder, {name: i for i, name in enumerate(class_names)},
                           extensions=IMAGE_EXTENSIONS, allow_empty=True)
    return _Files([Path(path) for path, _ in samples], [label for _, label in samples])


def _no_training_images(folder: Path) -> DatasetError:
    return DatasetError(f"no readable training images under {folder}: expected {folder}/<class>/*.png (or .jpg, ...)")


def _report_corrupt(bad: list[Path], on_corrupt: str) -> None:
    """Log every unreadable file; with on_corrupt=fail, stop at them."""
    if not bad:
        return
    for path in bad:
        log.warning("unreadable image: %s", path)
    if on_corrupt == "fail":
        more = f" and {len(bad) - 1} more (see the log)" if len(bad) > 1 else ""
        raise DatasetError(f"unreadable image {bad[0]}{more}: remove or replace it, or set dataset.on_corrupt=skip")
    log.warning("skipped %d unreadable image(s) (dataset.on_corrupt=skip)", len(bad))


def _drop_unreadable(files: _Files, ok: list[bool]) -> tuple[_Files, list[Path]]:
    return files.take(i for i, good in enumerate(ok) if good), [p for p, good in zip(files.paths, ok) if not good]


def _scan(root: Path, cfg: Mapping[str, Any]) -> tuple[dict[str, _Files], list[str], list[str], list[Path]]:
    """List and check every file, then carve missing splits from train.

    Returns:
        files per split, class names, the PIL mode of each readable file, unreadable paths.
    """
    folders = _split_folders(root)
    class_names = _class_names(folders["train"])
    if not class_names:
        raise _no_training_images(folders["train"])
    for split, folder in folders.items():
        extra = sorted(set(_class_names(folder)) - set(class_names))
        if extra:
            raise DatasetError(f"{folder} has class folders {extra} that {folders['train']} lacks: "
                               "every class needs training images")
    listed = {split: _list_files(folder, class_names) for split, folder in folders.items()}
    modes, bad = [], []
    for split, files in listed.items():
        probed = _parallel(_probe, files.paths)
        listed[split], unreadable = _drop_unreadable(files, [m is not None for m in probed])
        modes += [m for m in probed if m is not None]
        bad += unreadable
    carve = [s for s in ("val", "test") if s not in listed]
    *carved, rest = seeded_split(len(listed["train"].paths), tuple(float(cfg[f"{s}_fraction"]) for s in carve),
                                 int(cfg["seed"]))
    train = listed["train"]
    listed.update({s: train.take(idx.tolist()) for s, idx in zip(carve, carved)}, train=train.take(rest.tolist()))
    if not listed["train"].paths:
        raise _no_training_images(folders["train"])
    return listed, class_names, modes, bad


def _channels(cfg: Mapping[str, Any], modes: list[str]) -> int:
    if cfg["channels"] is None:
        return 1 if all(m in GRAY_MODES for m in modes) else 3
    if cfg["channels"] not in (1, 3):
        raise DatasetError(f"dataset.channels={cfg['channels']} is not supported: use 1, 3 or null (inferred)")
    return int(cfg["channels"])


def _in_memory(files: _Files, size: int, channels: int) -> tuple[Split, list[Path]]:
    pixels = _parallel(_try_read, [(p, size, channels) for p in files.paths])
    files, bad = _drop_unreadable(files, [x is not None for x in pixels])
    images = torch.from_numpy(np.stack([x for x in pixels if x is not None])) if files.paths \
        else torch.empty(0, channels, size, size, dtype=torch.uint8)  # (N, C, H, W); a carved split can be empty
    return Split(images, torch.tensor(files.labels, dtype=torch.long)), bad


def _lazy_data(root: Path, files: dict[str, _Files], class_names: list[str], size: int, channels: int,
               seed: int) -> ImageData:
    """ImageData over files left on disk: stats from a seeded train sample, fingerprint from file metadata."""
    train = files["train"]
    sample = torch.randperm(len(train.paths), generator=torch.Generator().manual_seed(seed))[:_STATS_SAMPLE]
    pixels = _parallel(lambda i: read_image(train.paths[i], size, channels), sample.tolist())
    mean, std = channel_stats(torch.from_numpy(np.stack(pixels)))
    digest = hashlib.sha256(f"{size}x{channels}".encode())
    for split in SPLITS:
        for path, label in zip(files[split].paths, files[split].labels):
            stat = path.stat()
            digest.update(f"{split}|{path.relative_to(root)}|{stat.st_size}|{stat.st_mtime_ns}|{label}\n".encode())
    splits = {s: Split(dataset=FolderDataset(files[s], size, channels)) for s in SPLITS}
    return ImageData(name="image_folder", **splits, class_names=class_names, input_shape=(channels, size, size),
                     mean=mean, std=std, fingerprint=digest.hexdigest(), source=str(root))


def load_image_folder(cfg: Mapping[str, Any]) -> ImageData:
    """Load `cfg["root"]` in either folder layout; in memory unless larger than `max_device_bytes`."""
    root = Path(cfg["root"])
    if not root.is_dir():
        raise DatasetError(f"dataset.root={root} is not a folder: point it at a folder with one sub-folder per class")
    on_corrupt = cfg["on_corrupt"]
    if on_corrupt not in ("skip", "fail"):
        raise DatasetError(f"dataset.on_corrupt={on_corrupt} is not supported: use skip or fail")
    files, class_names, modes, skipped = _scan(root, cfg)
    _report_corrupt(skipped, on_corrupt)
    size, channels = int(cfg["image_size"]), _channels(cfg, modes)
    if sum(len(f.paths) for f in files.values()) * channels * size * size > float(cfg["max_device_bytes"]):
        data = _lazy_data(root, files, class_names, size, channels, int(cfg["seed"]))
    else:
        splits, bad = {}, []
        for split in SPLITS:
            splits[split], unreadable = _in_memory(files[split], size, channels)
            bad += unreadable
        _report_corrupt(bad, on_corrupt)
        skipped += bad
        data = in_memory_data("image_folder", **splits, class_names=class_names, source=str(root))
    data.skipped = tuple(map(str, skipped))
    data.loader_workers = int(cfg.get("num_workers", 2))
    return data
