"""MNIST, Fashion-MNIST and CIFAR-10 through torchvision's dataset classes, read straight into tensors.

The official train split gives train and val (seeded `val_fraction`), the official test split
gives test. Pixels come from the dataset's `.data` array, with no per-sample transform. Files
are looked for first; a download is tried only when they are missing and `download` is true,
and every way that can fail ends in one `DatasetError` naming the files expected. torchvision
checks CIFAR-10's files against the official md5 sums; that check is kept (the tests register
their fake files' sums on the class rather than going around it with a reader of our own).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from convsweep.lightning_modules.data.base import ImageData, Split, in_memory_data, seeded_split
from convsweep.errors import DatasetError

_CLASS_NAMES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}


def _expected_files(vision_cls: type, root: Path) -> list[Path]:
    """The files torchvision's class reads, derived from the class itself so the two cannot drift."""
    if hasattr(vision_cls, "resources"):  # MNIST family: <root>/<ClassName>/raw/*-ubyte, unpacked
        raw = root / vision_cls.__name__ / "raw"
        return [raw / name.removesuffix(".gz") for name, _ in vision_cls.resources]
    folder = root / vision_cls.base_folder  # CIFAR: <root>/cifar-10-batches-py/
    names = [name for name, _ in vision_cls.train_list + vision_cls.test_list] + [vision_cls.meta["filename"]]
    return [folder / name for name in names]


def _unpack_gz(missing: list[Path]) -> None:
    """Unpack `<file>.gz` next to each missing file where it exists: the MNIST downloads come gzipped."""
    from torchvision.datasets.utils import extract_archive

    for path in missing:
        packed = path.with_name(path.name + ".gz")
        if packed.exists():
            extract_archive(str(packed), str(path.parent))


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


def _missing_error(name: str, missing: list[Path], download_error: BaseException | None) -> DatasetError:
    gz = " (or .gz)" if missing[0].parent.name == "raw" else ""
    tried = f"download failed ({_one_line(download_error)}); " if download_error else ""
    return DatasetError(f"{name}: missing {', '.join(map(str, missing))}{gz}; {tried}copy those files there, or run "
                        "once with dataset.download=true on a machine with internet and copy dataset.root over")


def _fetch(vision_cls: type, name: str, root: Path, download: bool) -> None:
    """Make the expected files exist, or raise a `DatasetError` saying which are missing and how to get them."""
    missing = [p for p in _expected_files(vision_cls, root) if not p.exists()]
    if missing and hasattr(vision_cls, "resources"):
        _unpack_gz(missing)
        missing = [p for p in missing if not p.exists()]
    if not missing:
        return
    download_error = None
    if download:
        try:
            vision_cls(str(root), train=True, download=True)
        except Exception as exc:  # offline, blocked or interrupted: URLError, RuntimeError, tarfile errors...
            download_error = exc
        missing = [p for p in missing if not p.exists()]
    if missing:
        raise _missing_error(name, missing, download_error)


def _tensors(dataset: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (N, C, H, W) images and int64 labels from `.data` ((N, H, W) tensor or (N, H, W, C) array)."""
    data = torch.as_tensor(dataset.data)
    images = data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)
    return images.contiguous(), torch.as_tensor(dataset.targets, dtype=torch.long)


def load_torchvision(cfg: Mapping[str, Any]) -> ImageData:
    """Load `cfg["name"]` (mnist | fashion_mnist | cifar10) from `cfg["root"]` in torchvision's layout."""
    import torchvision.datasets

    name = cfg["name"]
    vision_cls = getattr(torchvision.datasets, _CLASS_NAMES[name])
    root = Path(cfg["root"])
    _fetch(vision_cls, name, root, bool(cfg["download"]))
    try:
        official_train, official_test = vision_cls(str(root), train=True), vision_cls(str(root), train=False)
    except Exception as exc:  # md5 mismatch (CIFAR), bad idx header (assert/KeyError), truncation: the files are bad
        folder = _expected_files(vision_cls, root)[0].parent
        raise DatasetError(f"{name}: the files in {folder} are corrupted or not the official ones ({_one_line(exc)}); "
                           "delete them and download again") from exc
    images, labels = _tensors(official_train)
    val, train = seeded_split(len(labels), (float(cfg["val_fraction"]),), int(cfg["seed"]))
    return in_memory_data(name, Split(images[train], labels[train]), Split(images[val], labels[val]),
                          Split(*_tensors(official_test)), class_names=list(official_train.classes),
                          source=str(_expected_files(vision_cls, root)[0].parent))
