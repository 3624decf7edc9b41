"""`search.n_workers: auto` resolves in preflight, and each worker takes its share of the cores."""

from __future__ import annotations

import pytest
import torch

from convsweep.lightning_modules.worker_budget import auto_workers, available_cores
from convsweep.search.preflight import resolve_n_workers
from convsweep.search.schema import ConfigTypeError
from convsweep.search.workers import set_threads


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_auto_becomes_the_count_for_the_device_in_the_config(tiny_cfg) -> None:
    cfg = tiny_cfg("search.n_workers=auto", "trainer.accelerator=cpu")
    assert resolve_n_workers(cfg) == auto_workers("cpu", available_cores())
    assert cfg.search.n_workers == auto_workers("cpu", available_cores())  # the workers and the logged config see it


def test_a_number_is_kept(tiny_cfg) -> None:
    cfg = tiny_cfg("search.n_workers=3")
    assert resolve_n_workers(cfg) == 3 and cfg.search.n_workers == 3


@pytest.mark.parametrize("value", ["many", "0"])
def test_other_values_are_refused_naming_the_key(tiny_cfg, value: str) -> None:
    with pytest.raises(ConfigTypeError, match="n_workers"):
        tiny_cfg(f"search.n_workers={value}")


def test_each_worker_sets_cores_over_workers_threads(tiny_cfg, restore_threads) -> None:
    torch.set_num_threads(max(1, available_cores() // 2) + 1)  # not the share, so the call must change it
    assert set_threads(tiny_cfg("search.n_workers=2")) == max(1, available_cores() // 2)
    assert torch.get_num_threads() == max(1, available_cores() // 2)


def test_trainer_num_threads_wins(tiny_cfg, restore_threads) -> None:
    torch.set_num_threads(7)
    assert set_threads(tiny_cfg("search.n_workers=2", "trainer.num_threads=3")) == 3
    assert torch.get_num_threads() == 7  # left to the trial, which sets trainer.num_threads itself
