"""`search.n_workers: auto` and each worker's share of the CPU threads."""

from __future__ import annotations

import pytest
import torch

from convsweep.lightning_modules.worker_budget import auto_workers, set_worker_threads, threads_per_worker


@pytest.mark.parametrize("device, cores, workers", [("cuda", 16, 4), ("cuda", 6, 3), ("cuda", 2, 1), ("cuda", 1, 1),
                                                    ("cpu", 2, 2), ("cpu", 1, 1), ("cpu", 64, 8)])
def test_auto_workers_fits_the_device_and_its_cores(device: str, cores: int, workers: int) -> None:
    assert auto_workers(device, cores) == workers


def test_each_worker_gets_its_share_of_the_cores() -> None:
    assert threads_per_worker(4, 16) == 4 and threads_per_worker(3, 2) == 1 and threads_per_worker(1, 2) == 2
    before = torch.get_num_threads()
    try:
        assert set_worker_threads(2, 2) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
