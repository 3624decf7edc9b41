"""How many trial processes share one machine (`search.n_workers: auto`), and their CPU threads.

Measured, not guessed (PITFALLS.md, benchmarks/RESULTS.md):
- One H100, the default sweep, eager steps: 1, 2, 4 and 8 workers took 149, 119, 89 and 80 s.
  Processes without CUDA MPS time-slice the GPU, so 4 workers get 1.67x and 8 only 1.86x for
  twice the memory and host cores. Hence at most 4 on CUDA, and at least 2 cores each (one
  drives the GPU, one for the data plan, Lightning and the search).
- Two CPU cores, small-CNN trials: 2 single-thread workers gave 1.23x the trials/hour of one
  2-thread worker; small convs use extra intra-op threads poorly. Hence one worker per core on
  CPU, capped at 8 (each worker holds its own torch, dataset and Optuna/MLflow clients).
With CUDA graphs the host does less per step, so fewer workers are needed to fill the GPU;
the CUDA cap is a starting point to re-measure (`benchmarks/gpu_throughput.py --workers`).
"""

from __future__ import annotations

import os

import torch

MAX_CUDA_WORKERS = 4  # past the knee of 1/2/4/8-worker scaling measured on one H100
MAX_CPU_WORKERS = 8


def auto_workers(device: str, cpu_count: int | None = None) -> int:
    """The worker count `search.n_workers: auto` means for a device type ('cuda' or 'cpu').

    Args:
        device: where the trials train, as `resolve_device` names it.
        cpu_count: host cores (default: those this process may use).

    Returns:
        cuda: min(4, cores // 2), at least 1; cpu: min(8, cores), at least 1.
    """
    cores = cpu_count if cpu_count is not None else available_cores()
    if device == "cuda":
        return max(1, min(MAX_CUDA_WORKERS, cores // 2))
    return max(1, min(MAX_CPU_WORKERS, cores))


def threads_per_worker(n_workers: int, cpu_count: int | None = None) -> int:
    """torch CPU threads for each of `n_workers` processes: cores // workers, at least 1."""
    cores = cpu_count if cpu_count is not None else available_cores()
    return max(1, cores // max(1, int(n_workers)))


def set_worker_threads(n_workers: int, cpu_count: int | None = None) -> int:
    """Give this worker process its share of the cores (call once, at worker start); returns the count.

    Without it every worker starts torch with one thread per core, so N workers oversubscribe
    the machine N-fold.
    """
    threads = threads_per_worker(n_workers, cpu_count)
    torch.set_num_threads(threads)
    return threads


def available_cores() -> int:
    """Cores this process may run on (the affinity mask where the OS has one), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)
