"""Pictures of one trained ConvNet: what its first layer learned, what each block sees, where it errs.

Everything is computed on the validation split, and the activation maps always use its first
`N_IMAGES` images, so two trials' pictures show the same inputs side by side.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from convsweep.dashboards.figures import ViewSkipped, draw_view, fresh_dir, log_views, save_png
from convsweep.lightning_modules.data.base import ImageData, Split
from convsweep.lightning_modules.runner import evaluate_model

N_IMAGES = 4  # validation images (the first ones, so fixed across trials) in the activation maps
MAX_MISCLASSIFIED = 25
TILE_PX = 24  # a filter tile is upscaled (nearest) to at least this many pixels a side
GAP_PX = 2  # white gap between filter tiles
MAX_ANNOTATED_CLASSES = 30  # above this the confusion matrix drops per-cell counts (unreadable)


@dataclass(frozen=True)
class FilterGrid:
    """The first conv layer's filters tiled into one image, one tile per output channel."""

    image: np.ndarray  # uint8 (H, W, 3)
    n_tiles: int
    tile_size: int  # pixels per tile side
    grid_shape: tuple[int, int]  # (rows, cols)


def _grid_shape(n: int) -> tuple[int, int]:
    """(rows, cols) of the most square grid holding n cells."""
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def _to_display(image: torch.Tensor) -> np.ndarray:
    """One (C, H, W) image, uint8 or float in [0, 1], as (H, W, 3) RGB or (H, W) grey in [0, 1] for imshow."""
    x = image.detach().float().cpu()
    x = x / 255.0 if image.dtype == torch.uint8 else x.clamp(0, 1)
    return x.permute(1, 2, 0).numpy() if x.shape[0] == 3 else x.mean(0).numpy()


def _bare(ax: Any) -> None:
    """No ticks and no frame for a picture panel; emptying the ticks (rather than `set_axis_off`) also
    spares the layout engine from measuring them, about 3x faster on a 5x5 grid."""
    ax.set(xticks=[], yticks=[])
    ax.set_frame_on(False)


def filter_grid(model: nn.Module) -> FilterGrid:
    """Tile the first conv layer's kernels: colour for RGB input, else one grey channel (the mean if > 3).

    Each tile is min-max normalised on its own, so a filter's pattern shows whatever its scale.
    """
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ViewSkipped("the model has no conv layer")
    weight = conv.weight.detach().float().cpu()  # (O, I, k, k)
    if weight.shape[1] != 3:
        weight = weight.mean(1, keepdim=True).expand(-1, 3, -1, -1)
    lo = weight.amin(dim=(1, 2, 3), keepdim=True)
    hi = weight.amax(dim=(1, 2, 3), keepdim=True)
    tiles = (weight - lo) / (hi - lo).clamp_min(1e-12)
    scale = max(1, math.ceil(TILE_PX / max(tiles.shape[2:])))
    tiles = tiles.repeat_interleave(scale, 2).repeat_interleave(scale, 3)  # (O, 3, t, t)
    n, _, t, _ = tiles.shape
    rows, cols = _grid_shape(n)
    image = np.full((rows * t + (rows + 1) * GAP_PX, cols * t + (cols + 1) * GAP_PX, 3), 255, np.uint8)
    pixels = (tiles.permute(0, 2, 3, 1) * 255).round().to(torch.uint8).numpy()  # (O, t, t, 3)
    for i, tile in enumerate(pixels):
        r, c = divmod(i, cols)
        y, x = GAP_PX + r * (t + GAP_PX), GAP_PX + c * (t + GAP_PX)
        image[y:y + t, x:x + t] = tile
    return FilterGrid(image, n, t, (rows, cols))


def filter_figure(grid: FilterGrid) -> Figure:
    """The filter grid with a title saying what the tiles are."""
    height, width = grid.image.shape[:2]
    fig = Figure(figsize=(6, 6 * height / width + 0.5), layout="constrained")
    ax = fig.subplots()
    ax.imshow(grid.image, interpolation="nearest")
    _bare(ax)
    ax.set_title(f"first conv layer: {grid.n_tiles} filters")
    return fig


@torch.no_grad()
def block_activations(model: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
    """Each conv block's output (B, C, H, W) for `images`, captured by forward hooks on `model.blocks`."""
    outputs: list[torch.Tensor] = []

    def keep(_module: nn.Module, _inputs: Any, out: torch.Tensor) -> None:
        outputs.append(out.detach().to("cpu", torch.float32, copy=True))  # a copy: later in-place ops can't alter it

    hooks = [block.register_forward_hook(keep) for block in model.blocks]
    try:
        model.eval()(images.to(next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
    return outputs


def activation_maps(model: nn.Module, images: torch.Tensor) -> Figure:
    """Rows = images, columns = the input then each block's activation (mean over its channels).

    Args:
        model: a `ConvNet` (anything with `blocks`, an iterable of modules run in order).
        images: (B, C, H, W), raw uint8 or float in [0, 1], as the model takes them.
    """
    maps = block_activations(model, images)
    rows, cols = len(images), 1 + len(maps)
    fig = Figure(figsize=(2 * cols, 2 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, image in enumerate(images):
        axes[r, 0].imshow(_to_display(image), cmap="gray", vmin=0, vmax=1)
        for c, act in enumerate(maps, start=1):
            axes[r, c].imshow(act[r].mean(0).numpy(), cmap="viridis")
    axes[0, 0].set_title("input")
    for c, act in enumerate(maps, start=1):
        channels, height, width = act.shape[1:]
        axes[0, c].set_title(f"block{c}: mean of {channels} ch\n{height}x{width}", fontsize=9)
    for ax in axes.flat:
        _bare(ax)
    return fig


def confusion_matrix_image(confusion: torch.Tensor | np.ndarray, class_names: Sequence[str]) -> Figure:
    """Counts (K, K), rows = true class, columns = predicted, with class names on both axes."""
    counts = np.asarray(confusion)
    k = len(class_names)
    side = min(4 + 0.5 * k, 20)
    fig = Figure(figsize=(side + 1, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"validation confusion matrix ({int(counts.trace())}/{int(counts.sum())} correct)")
    if k <= MAX_ANNOTATED_CLASSES:
        dark = counts.max() / 2
        for (i, j), n in np.ndenumerate(counts):
            ax.text(j, i, str(n), ha="center", va="center", fontsize=8, color="white" if n > dark else "black")
    return fig


def misclassified_indices(labels: torch.Tensor, preds: torch.Tensor, max_n: int) -> list[int]:
    """Positions of the first `max_n` images whose prediction is wrong, in split order."""
    return (labels != preds).nonzero().flatten()[:max_n].tolist()


def misclassified_grid(images: torch.Tensor, labels: torch.Tensor, preds: torch.Tensor,
                       class_names: Sequence[str], max_n: int = MAX_MISCLASSIFIED) -> Figure | None:
    """The first `max_n` misclassified images, each titled "true → pred"; None if there are none.

    Args:
        images: (N, C, H, W) uint8 or float in [0, 1].
        labels, preds: (N,) class indices.
    """
    wrong = misclassified_indices(labels, preds, max_n)
    if not wrong:
        return None
    rows, cols = _grid_shape(len(wrong))
    fig = Figure(figsize=(1.8 * cols, 1.9 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        _bare(ax)
    for ax, i in zip(axes.flat, wrong):
        ax.imshow(_to_display(images[i]), cmap="gray", vmin=0, vmax=1)
        ax.set_title(f"{class_names[labels[i]]} → {class_names[preds[i]]}", fontsize=8)
    fig.suptitle(f"misclassified validation images (first {len(wrong)})")
    return fig


def _split_images(split: Split, indices: Sequence[int]) -> torch.Tensor:
    """Images (n, C, H, W) at `indices`, from memory or from a lazy split's dataset."""
    if split.in_memory:
        return split.images[list(indices)]  # type: ignore[index]
    return torch.stack([split.dataset[i][0] for i in indices])  # type: ignore[index]


def _misclassified_view(data: ImageData, evaluation: dict[str, Any]) -> Figure:
    """Reads only the misclassified images, so a lazy (on-disk) validation split is not loaded whole."""
    labels, preds = evaluation["labels"], evaluation["preds"]
    wrong = misclassified_indices(labels, preds, MAX_MISCLASSIFIED)
    fig = misclassified_grid(_split_images(data.val, wrong), labels[wrong], preds[wrong], data.class_names)
    if fig is None:
        raise ViewSkipped("every validation image is classified correctly")
    return fig


def _write_per_class(path: Path, data: ImageData, evaluation: dict[str, Any]) -> Path:
    """Validation accuracy per class with its support, as JSON: the numbers behind the confusion matrix."""
    support = evaluation["confusion"].sum(1).tolist()
    per_class = {name: {"acc": acc, "n": n}
                 for name, acc, n in zip(data.class_names, evaluation["per_class_acc"], support)}
    path.write_text(json.dumps({"acc": evaluation["acc"], "per_class": per_class}, indent=2) + "\n")
    return path


def log_cnn_views(client: Any, run_id: str, model: nn.Module, data: ImageData, work_dir: Path,
                  device: str = "cpu") -> list[str]:
    """Draw the four CNN views on the validation split and log them under the run's `cnn/`.

    A view that cannot be drawn is left out and explained in `cnn/notes.txt`; this never raises
    for a view, so a trial's run is not lost to a plotting problem.

    Args:
        client: an `mlflow.MlflowClient`.
        run_id: the run that trained `model`.
        model: the trained `ConvNet`.
        data: the dataset it was trained on; only `data.val` is read.
        work_dir: scratch folder; its `cnn/` subfolder is replaced by this call's files.
        device: where to run the forward passes.

    Returns:
        The logged artifact paths (`cnn/filters.png`, ..., `cnn/notes.txt`).
    """
    out_dir = fresh_dir(Path(work_dir) / "cnn")
    model = model.to(device).eval()
    evaluation = functools.cache(lambda: evaluate_model(model, data.val, data.num_classes, device))
    first = range(min(N_IMAGES, len(data.val)))
    figures: dict[str, Callable[[], Figure]] = {
        "filters": lambda: filter_figure(filter_grid(model)),
        "activations": lambda: activation_maps(model, _split_images(data.val, first)),
        "confusion_matrix": lambda: confusion_matrix_image(evaluation()["confusion"], data.class_names),
        "misclassified": lambda: _misclassified_view(data, evaluation()),
    }
    outcomes = [draw_view(name, lambda make=make, name=name: [save_png(make(), out_dir / f"{name}.png")])
                for name, make in figures.items()]
    outcomes.append(draw_view("per_class_accuracy",
                              lambda: [_write_per_class(out_dir / "per_class_accuracy.json", data, evaluation())]))
    return log_views(client, run_id, outcomes, out_dir, "cnn")
