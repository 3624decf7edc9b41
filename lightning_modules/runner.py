"""Train one configuration with a lean Lightning Trainer, and evaluate a trained net.

Lightning drives the fit (epochs, validation, callbacks such as the pruner and MLflow
logging); the optimizer steps are taken by `StepRunner`, several per Lightning batch, and on
CUDA replayed from a graph captured once per trial (`cuda_graphs.py`). The Trainer is set up
lean: no sanity-check pass, no progress bar, no model summary, no logger, no checkpoint
files, no per-step logging.

Per-trial fixed cost, and what keeps it small:
- the best epoch's weights stay on the device (copied in place at each improving epoch) and
  reach the host once, at the end;
- cudnn's benchmark mode is off by default (`trainer.cudnn_benchmark: auto`): every trial is a
  new architecture, so autotuning would run again for each new conv shape (train batch,
  ragged last batch, validation batch) in every trial, a cost paid before the first useful
  step; small convs gain little from it;
- the Trainer costs about 12 ms to build on an idle core (most of it Lightning scanning
  entry points for external callbacks); the model is logged by the search side, not here.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import signal
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch.nn import functional as F

from convsweep.errors import ConvsweepError
from convsweep.lightning_modules.arch import ArchSpec, OptimSpec
from convsweep.lightning_modules.cuda_graphs import StepRunner, resolve_cuda_graphs
from convsweep.lightning_modules.data import ImageData, make_batches
from convsweep.lightning_modules.data.base import Split
from convsweep.lightning_modules.data.batches import DeviceBatches, StepChunks, scaled_augment
from convsweep.lightning_modules.module import ConvNetModule
from convsweep.lightning_modules.network import ConvNet, NetworkPlan, build_convnet
from convsweep.lightning_modules.train_step import TrainStep, autocast_dtype


class DivergedError(ConvsweepError):
    """The loss became NaN or infinite: training cannot recover, so the fit stops at that epoch."""


LOSSES = ("train/loss", "val/loss")  # checked for divergence at the end of every epoch


class EpochHistory(Callback):
    """Records every epoch's logged metrics, and keeps the weights of the best epoch by `metric`.

    The one metric (`search.metric`) decides both what the pruner sees and which epoch's
    weights become the trial's model, so the checkpoint and the objective always agree.
    Listeners (e.g. MLflow logging) get each row as it is recorded: the history calls them
    itself, so no callback list has to put them in the right order.

    Divergence is caught here, once per epoch: the losses are summed on the device during the
    epoch and reach the host in this one sync, so no step waits for a check. A non-finite loss
    raises `DivergedError`, and a non-finite metric never becomes the best epoch.
    """

    def __init__(self, metric: str, direction: str = "maximize",
                 listeners: Sequence[Callable[[dict[str, float]], None]] = ()) -> None:
        self.metric, self.maximize = metric, direction == "maximize"
        self.listeners = list(listeners)
        self.epochs: list[dict[str, float]] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_epoch = -1

    @property
    def best_value(self) -> float | None:
        return self.epochs[self.best_epoch][self.metric] if self.best_epoch >= 0 else None

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        row = {k: float(v) for k, v in trainer.callback_metrics.items()}  # one host sync per epoch
        row["epoch"] = float(trainer.current_epoch)
        self.epochs.append(row)
        for listener in self.listeners:
            listener(row)
        for name in LOSSES:
            if name in row and not math.isfinite(row[name]):
                raise DivergedError(f"diverged: loss is {row[name]} at epoch {trainer.current_epoch} ({name})")
        value = row.get(self.metric)
        if value is None or not math.isfinite(value):
            return
        best = self.best_value
        if best is None or (value > best if self.maximize else value < best):
            self.best_epoch = len(self.epochs) - 1
            net = getattr(pl_module.net, "_orig_mod", pl_module.net)  # trainer.compile wraps it; keep the plain keys
            self._keep(net.state_dict())

    @torch.no_grad()
    def _keep(self, state: dict[str, torch.Tensor]) -> None:
        """Copy `state` into buffers on its own device: allocated once, no host copy until the fit ends."""
        if self.best_state is None:
            self.best_state = {k: v.detach().clone() for k, v in state.items()}
            return
        for k, v in state.items():
            self.best_state[k].copy_(v)


@dataclass
class TrainResult:
    """What one training run produced."""

    model: ConvNet  # on CPU, with the best epoch's weights, in eval mode
    plan: NetworkPlan
    history: list[dict[str, float]]
    best_value: float | None
    best_epoch: int
    device: str
    duration_s: float
    cuda_graphs: bool = False  # whether the training steps were replayed from a CUDA graph
    fallback_reason: str | None = None  # why graphs were asked for (trainer.cuda_graphs) but not used
    steps: int = 0  # optimizer steps taken


def resolve_device(accelerator: str) -> str:
    """'auto' picks CUDA when present; the result is a torch device type."""
    if accelerator in ("auto", "gpu", "cuda"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cpu"


def _auto(value: Any, default: bool) -> bool:
    return default if value in (None, "auto") else bool(value)


@functools.cache
def _quiet_lightning() -> None:
    """Lightning's per-fit banners ('GPU available: ...') are noise inside a sweep."""
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")  # inside Lightning 2.6
    for package in ("lightning.pytorch", "pytorch_lightning", "lightning.fabric", "lightning_fabric"):
        for name in ("utilities.rank_zero", "accelerators.cuda", "utilities.seed", "trainer.connectors.signal_connector"):
            logging.getLogger(f"{package}.{name}").setLevel(logging.WARNING)


def make_trainer(trainer_cfg: Mapping[str, Any], device: str, callbacks: Sequence[Callback],
                 n_train_batches: int, max_epochs: int | None = None) -> Trainer:
    """A lean Trainer: no sanity pass, progress bar, summary, logger or checkpoint files.

    Precision and gradient clipping are the training step's (it autocasts itself, and a
    captured step cannot call back into Lightning), so the Trainer itself runs in fp32.
    """
    deterministic = _auto(trainer_cfg.get("deterministic", "auto"), device == "cpu")
    if deterministic and device == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    _quiet_lightning()
    return Trainer(
        max_epochs=int(max_epochs if max_epochs is not None else trainer_cfg.get("max_epochs", 1)),
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=trainer_cfg.get("devices", 1),
        precision="32-true",
        deterministic="warn" if deterministic and device == "cuda" else deterministic,
        benchmark=_auto(trainer_cfg.get("cudnn_benchmark"), False) and not deterministic,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        logger=False,
        log_every_n_steps=max(1, min(50, n_train_batches)),
        callbacks=list(callbacks),
    )


def step_budget(steps_per_epoch: int, max_epochs: int, max_steps: int | None) -> tuple[int, int]:
    """(epochs, optimizer steps) of a run: `max_steps`, when set, replaces `max_epochs`.

    With a step budget the run takes ceil(max_steps / steps_per_epoch) epochs and its last
    epoch is cut short, so a small dataset gets as many updates as a large one.
    """
    if max_steps:
        return math.ceil(int(max_steps) / steps_per_epoch), int(max_steps)
    return int(max_epochs), int(max_epochs) * steps_per_epoch


def epoch_steps(n_batches: int, limit: float | int | None) -> int:
    """Optimizer steps per epoch: all batches, or `trainer.limit_train_batches` (int steps, or a fraction)."""
    if not limit:
        return n_batches
    if isinstance(limit, float) and limit <= 1.0:
        return max(1, int(n_batches * limit))
    return min(n_batches, int(limit))


def train_model(data: ImageData, arch: ArchSpec, optim: OptimSpec, trainer_cfg: Mapping[str, Any], *,
                seed: int, metric: str = "val/acc", direction: str = "maximize",
                callbacks: Sequence[Callback] = (), history: EpochHistory | None = None,
                train_split: Split | None = None) -> TrainResult:
    """Train one configuration on `data.train` (or `train_split`), validating on `data.val` every epoch.

    Args:
        data: the dataset (loaded once per process).
        arch, optim: the configuration (optim also holds the recipe: schedule, warm-up,
            label smoothing, augmentation strength).
        trainer_cfg: the `trainer:` config group.
        seed: seeds weights, batch order and augmentation; same seed -> same per-epoch metrics on CPU.
        metric, direction: which epoch's weights to keep.
        callbacks: run before the history is read (e.g. MLflow logging, the Optuna pruner).
        history: pass one in to keep the per-epoch record even if a callback aborts the fit.
        train_split: train on this instead of `data.train` (e.g. train+val for the final model).

    Raises:
        ArchitectureError: the spec cannot be built for `data.input_shape`, before any training.
        PrecisionError: `trainer.precision` is not one the training step runs.
    """
    start = time.perf_counter()
    device = torch.device(resolve_device(str(trainer_cfg.get("accelerator", "auto"))))
    if trainer_cfg.get("num_threads"):
        torch.set_num_threads(int(trainer_cfg["num_threads"]))
    amp_dtype = autocast_dtype(trainer_cfg.get("precision", "auto"), device)
    seed_everything(seed, workers=False, verbose=False)
    channels_last = _auto(trainer_cfg.get("channels_last"), device.type == "cuda")
    net = build_convnet(arch, data.input_shape, data.num_classes, data.mean, data.std).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if trainer_cfg.get("compile"):
        net = torch.compile(net)  # type: ignore[assignment]
    train_batches = make_batches(train_split or data.train, optim.batch_size, device, train=True,
                                 augment=data.augment, seed=seed, num_workers=data.loader_workers,
                                 strength=optim.augment_strength)
    per_epoch = epoch_steps(len(train_batches), trainer_cfg.get("limit_train_batches"))
    epochs, total_steps = step_budget(per_epoch, int(trainer_cfg.get("max_epochs", 1)), trainer_cfg.get("max_steps"))
    resident = isinstance(train_batches, DeviceBatches)
    padding, flip_p = scaled_augment(data.augment, optim.augment_strength)
    step = TrainStep(net, optim, total_steps, device, amp_dtype=amp_dtype, channels_last=channels_last,
                     grad_clip=trainer_cfg.get("gradient_clip_val"),
                     images=train_batches.images if resident else None,  # type: ignore[union-attr]
                     labels=train_batches.labels if resident else None,  # type: ignore[union-attr]
                     padding=padding, flips=flip_p > 0)
    graphs = resolve_cuda_graphs(trainer_cfg.get("cuda_graphs", "auto"), device)
    not_resident = None if resident or not graphs else "the training split streams from disk (DataLoader); graphs need it on the device"
    runner = StepRunner(step, optim.batch_size, graphs=graphs and resident)
    module = ConvNetModule(net, runner)
    chunks = StepChunks(train_batches, int(trainer_cfg.get("chunk_steps") or 1), per_epoch, total_steps)
    val_batch = _val_batch_size(trainer_cfg.get("val_batch_size", "auto"), device)
    val_batches = make_batches(data.val, max(optim.batch_size, val_batch), device, train=False,
                               num_workers=data.loader_workers)
    history = history or EpochHistory(metric, direction)
    trainer = make_trainer(trainer_cfg, device.type, [history, *callbacks], chunks.chunks_per_epoch,
                           max_epochs=epochs)
    try:
        trainer.fit(module, train_dataloaders=chunks, val_dataloaders=val_batches)
    except SystemExit:
        # Lightning answers Ctrl-C by ignoring SIGINT and calling exit(1); give the caller back a
        # KeyboardInterrupt (and Ctrl-C) so the sweep can mark the trial and tell how to resume.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt from None
    finally:
        used, reason = runner.replays > 0, not_resident or runner.unused_reason()
        runner.close()
    raw = getattr(net, "_orig_mod", net)
    if history.best_state is not None:
        raw.load_state_dict(history.best_state)
    model = raw.to("cpu", memory_format=torch.contiguous_format).eval()
    return TrainResult(model, model.plan, history.epochs, history.best_value, history.best_epoch, device.type,
                       time.perf_counter() - start, cuda_graphs=used, fallback_reason=reason, steps=runner.steps)


def _val_batch_size(setting: Any, device: torch.device) -> int:
    """Validation batch: large, since it only runs forward (auto = 1024 on CUDA, 256 on CPU)."""
    if setting in (None, "auto"):
        return 1024 if device.type == "cuda" else 256
    return int(setting)


@torch.no_grad()
def predict(model: torch.nn.Module, split: Split, device: str = "cpu", batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (N, K) and labels (N,) for a whole split, in split order, on CPU."""
    model = model.to(device).eval()
    logits, labels = [], []
    for x, y in make_batches(split, batch_size, device, train=False):
        logits.append(model(x).float().cpu())
        labels.append(y.cpu())
    return torch.cat(logits), torch.cat(labels)


def evaluate_model(model: torch.nn.Module, split: Split, num_classes: int, device: str = "cpu") -> dict[str, Any]:
    """Accuracy, loss, per-class accuracy and the confusion matrix (rows = true class)."""
    logits, labels = predict(model, split, device)
    preds = logits.argmax(1)
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    confusion.index_put_((labels, preds), torch.ones_like(labels), accumulate=True)
    per_class = confusion.diag().float() / confusion.sum(1).clamp_min(1).float()
    return {"acc": float((preds == labels).float().mean()), "loss": float(F.cross_entropy(logits, labels)),
            "per_class_acc": per_class.tolist(), "confusion": confusion, "preds": preds, "labels": labels}
