"""Fixtures that compose the real `conf/dataset/*.yaml` with tiny data and a per-test root."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
from omegaconf import DictConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture
def dataset_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """`dataset_cfg(name, **overrides)`: conf/dataset/<name>.yaml with `root` in this test's tmp_path."""

    def make(name: str, **overrides: Any) -> DictConfig:
        cfg = OmegaConf.load(CONF_DIR / "dataset" / f"{name}.yaml")
        if cfg.get("root") is not None or name == "image_folder":
            cfg.root = str(tmp_path / "data")
        return OmegaConf.merge(cfg, overrides)

    return make

