"""The classic architectures in conf/arch/ build and train on every bundled dataset (a few steps each)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

import convsweep.lightning_modules.data as data_pkg
from convsweep.lightning_modules.arch import ArchSpec, OptimSpec
from convsweep.lightning_modules.data import load_dataset
from convsweep.lightning_modules.network import plan_convnet
from convsweep.lightning_modules.runner import train_model
from convsweep.search.compose import available, compose_config
from tests.lightning_modules.test_datasets import DatasetCfg, make_folder, write_fake_cifar, write_fake_mnist

ARCHS = ["lenet5", "vgg_small", "resnet_small", "small"]
SMALL = {"shapes": dict(n_train=48, n_val=12, n_test=12), "digits": {}, "mnist": dict(download=False),
         "fashion_mnist": dict(download=False), "cifar10": dict(download=False), "image_folder": dict(image_size=16)}


@pytest.fixture(autouse=True)
def fresh_dataset_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_pkg, "_CACHE", {})


def tiny_dataset(name: str, dataset_cfg: DatasetCfg, monkeypatch: pytest.MonkeyPatch):
    """`name` loaded from a few files written in its library's on-disk layout (no download)."""
    cfg = dataset_cfg(name, **SMALL[name])
    root = Path(str(cfg.root)) if cfg.get("root") else None
    if name in ("mnist", "fashion_mnist"):
        write_fake_mnist(root, {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}[name], n_train=40, n_test=10)
    elif name == "cifar10":
        from torchvision.datasets import CIFAR10

        sums, meta_md5 = write_fake_cifar(root, per_batch=10)
        monkeypatch.setattr(CIFAR10, "train_list", [list(s) for s in sums[:5]])
        monkeypatch.setattr(CIFAR10, "test_list", [list(sums[5])])
        monkeypatch.setattr(CIFAR10, "meta", {**CIFAR10.meta, "md5": meta_md5})
    elif name == "image_folder":
        make_folder(root, {"cat": "RGB", "dog": "RGB"}, n=8)
    return load_dataset(cfg)


def test_every_shipped_arch_is_covered() -> None:
    assert sorted(available("arch")) == sorted(ARCHS)


# The quick run trains every arch on digits; the other datasets run in the full (slow) selection.
@pytest.mark.parametrize(("arch", "dataset"), [
    pytest.param(arch, dataset, marks=() if dataset == "digits" else pytest.mark.slow)
    for arch in ARCHS for dataset in SMALL])
def test_arch_trains_a_few_steps(arch: str, dataset: str, dataset_cfg: DatasetCfg,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = compose_config([f"arch={arch}", "trainer.max_epochs=1", "trainer.limit_train_batches=2",
                          "optim.batch_size=16"])
    spec = ArchSpec.from_dict(OmegaConf.to_container(cfg.arch))
    data = tiny_dataset(dataset, dataset_cfg, monkeypatch)
    result = train_model(data, spec, OptimSpec.from_dict(OmegaConf.to_container(cfg.optim)), cfg.trainer, seed=0)
    assert len(result.history) == 1 and 0.0 <= result.best_value <= 1.0
    assert result.plan == plan_convnet(spec, data.input_shape, data.num_classes)


@pytest.mark.parametrize("arch", ["vgg_small", "resnet_small"])
def test_classic_archs_stay_inside_the_default_compute_budget(arch: str) -> None:
    cfg = compose_config([f"arch={arch}"])
    spec = ArchSpec.from_dict(OmegaConf.to_container(cfg.arch))
    for shape in ((1, 28, 28), (1, 8, 8)):  # shapes (the default dataset), digits
        assert plan_convnet(spec, shape, 10).macs <= float(cfg.search.max_macs)
