"""Replay the training step as a CUDA graph: warm up, capture once per trial, fall back to eager.

Why: on an H100 an eager step of a small CNN costs 3.5-4 ms of host time whatever the net,
while the same step replayed from a CUDA graph costs 0.3-1 ms (PITFALLS.md). The recipe
that works there: a few warm-up steps on a side stream (lazy state: optimizer buffers,
cuBLAS workspaces), then one capture with the inputs in static buffers that are refilled
with `copy_` before each replay, and `capturable=True` optimizers.

`StepRunner` runs every optimizer step of a trial. Full-size batches of a resident split go
through the graph once it is captured; the ragged last batch of an epoch, batches from a
DataLoader, and everything after a failed capture run the same `TrainStep` eagerly. A capture
failure never ends the trial: the reason is kept for the run record.
"""

from __future__ import annotations

import contextlib
import gc
from typing import Callable, Iterator

import torch

from convsweep.lightning_modules.train_step import TrainStep

WARMUP_STEPS = 3  # eager steps on a side stream before capture, as in torch's whole-network example

StepInput = torch.Tensor | tuple[torch.Tensor, torch.Tensor]  # a plan slice (4, B), or a loaded (x, y) batch


class GraphCaptureError(RuntimeError):
    """A CUDA graph cannot be captured here (e.g. no CUDA device)."""


def resolve_cuda_graphs(setting: object, device: torch.device) -> bool:
    """`trainer.cuda_graphs`: auto = on for CUDA; true asks for them anywhere (off CUDA it falls back)."""
    if setting in (None, "auto"):
        return device.type == "cuda"
    if isinstance(setting, str):
        return setting.lower() in ("true", "1", "yes", "on")
    return bool(setting)


def capture_graph(fn: Callable[[], None], device: torch.device) -> Callable[[], None]:
    """Capture one call of `fn` into a CUDA graph and return the graph's replay.

    The captured work does not run here: call the returned function once to run it. Errors
    are raised as they come, after ending the capture, so the caller can go on eagerly.
    """
    if device.type != "cuda":
        raise GraphCaptureError(f"CUDA graphs need a CUDA device; this trial trains on {device.type}")
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream(device)
    torch.cuda.synchronize(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    collecting = gc.isenabled()
    gc.disable()  # no collection mid-capture (torch.cuda.graph runs a full gc.collect() first instead, per trial)
    try:
        with torch.cuda.stream(stream):
            # thread_local: a background thread (e.g. model logging) touching CUDA cannot spoil the capture
            graph.capture_begin(capture_error_mode="thread_local")
            try:
                fn()
            except BaseException:
                with contextlib.suppress(RuntimeError):
                    graph.capture_end()
                raise
            graph.capture_end()
    finally:
        if collecting:
            gc.enable()
    torch.cuda.current_stream(device).wait_stream(stream)
    return graph.replay


@contextlib.contextmanager
def on_stream(stream: torch.cuda.Stream | None) -> Iterator[None]:
    """Run the block on `stream`, ordered after, and then before, the current stream (no-op for None)."""
    if stream is None:
        yield
        return
    current = torch.cuda.current_stream(stream.device)
    stream.wait_stream(current)
    with torch.cuda.stream(stream):
        yield
    current.wait_stream(stream)


class StepRunner:
    """Runs each optimizer step: eagerly, or by replaying the captured graph of `step.on_plan`.

    Args:
        step: the step function and its device state.
        batch_size: B of a full batch; only full batches are captured and replayed.
        graphs: try to capture (from `resolve_cuda_graphs`).
        warmup: eager steps before the capture.
    """

    def __init__(self, step: TrainStep, batch_size: int, *, graphs: bool, warmup: int = WARMUP_STEPS) -> None:
        self.step, self.batch_size, self.warmup = step, int(batch_size), max(1, warmup)
        self.wanted = graphs
        self.static_plan = torch.zeros(4, self.batch_size, dtype=torch.long, device=step.device)  # the graph's input
        self.replay: Callable[[], None] | None = None
        # one side stream for all warm-up steps, so their freed blocks stay in one stream's cache
        self.side = torch.cuda.Stream(step.device) if graphs and step.device.type == "cuda" else None
        self.fallback_reason: str | None = None
        self.steps = 0  # optimizer steps run, all paths
        self.full_steps = 0  # of which full-size resident batches, the ones a graph can replay
        self.replays = 0  # of which by graph replay
        self.samples = 0  # training samples since the last `take_epoch`

    @property
    def graphed(self) -> bool:
        """Whether steps are being replayed from a captured graph."""
        return self.replay is not None

    def run(self, item: StepInput) -> None:
        """One optimizer step on a plan slice (int64 (4, b)) or a loaded (x, y) batch."""
        if isinstance(item, tuple):
            self.step.update(*item)
            n = len(item[1])
        else:
            n = item.shape[1]
            if self.wanted and n == self.batch_size:
                self._graph_step(item)
            else:
                self.step.on_plan(item)
        self.steps += 1
        self.samples += n

    def _graph_step(self, plan: torch.Tensor) -> None:
        self.full_steps += 1
        if self.replay is None and self.full_steps <= self.warmup:
            with on_stream(self.side):
                self.step.on_plan(plan)
            return
        self.static_plan.copy_(plan)
        if self.replay is None:
            try:
                self.replay = capture_graph(lambda: self.step.on_plan(self.static_plan), self.step.device)
            except Exception as exc:  # noqa: BLE001 - any capture failure means: go on eagerly, say why
                self._fall_back(exc)
                self.step.on_plan(plan)
                return
        self.replay()
        self.replays += 1

    def _fall_back(self, exc: Exception) -> None:
        """Give up on graphs for this trial: drop the half-captured gradient buffers, keep the reason."""
        self.wanted, self.replay = False, None
        self.fallback_reason = f"{type(exc).__name__}: {exc}"[:500]
        self.step.optimizer.zero_grad(set_to_none=True)
        if self.step.device.type == "cuda":
            with contextlib.suppress(RuntimeError):
                torch.cuda.synchronize(self.step.device)

    def take_epoch(self) -> tuple[torch.Tensor, int]:
        """The epoch's (loss x samples, correct) device sums and its sample count; both restart at 0."""
        samples, self.samples = self.samples, 0
        return self.step.take_sums(), samples

    def close(self) -> None:
        """Release the graph and its gradient buffers (the trial is over)."""
        self.replay = None
        self.step.optimizer.zero_grad(set_to_none=True)

    def unused_reason(self) -> str | None:
        """Why graphs were asked for but not used: the capture's failure, or too few steps to capture."""
        if self.fallback_reason or not self.wanted or self.graphed:
            return self.fallback_reason
        return (f"the trial ran {self.full_steps} full-size steps, too few to capture after {self.warmup} warm-up "
                "steps")
