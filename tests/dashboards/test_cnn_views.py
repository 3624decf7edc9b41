"""CNN views of one net: filter tiles, per-block activations, confusion matrix, misclassified images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image

from convsweep.dashboards import cnn_views
from convsweep.dashboards.cnn_views import (GAP_PX, activation_maps, confusion_matrix_image, filter_grid, log_cnn_views,
                                  misclassified_grid)
from convsweep.dashboards.figures import DPI, save_png
from convsweep.lightning_modules.data.base import ImageData
from convsweep.lightning_modules.network import ConvNet
from convsweep.lightning_modules.runner import evaluate_model


CNN_FILES = {"cnn/filters.png", "cnn/activations.png", "cnn/confusion_matrix.png", "cnn/misclassified.png",
             "cnn/per_class_accuracy.json", "cnn/notes.txt"}


def first_conv(net: torch.nn.Module) -> torch.nn.Conv2d:
    """The net's first conv layer, in module order: the one whose filters the grid shows."""
    return next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))


def _saved_png(fig: object, path: Path) -> np.ndarray:
    """Save through the dashboards' one PNG writer and check the file has the figure's pixel size."""
    width, height = (fig.get_size_inches() * DPI).round().astype(int)  # type: ignore[attr-defined]
    with Image.open(save_png(fig, path)) as image:  # type: ignore[arg-type]
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape == (height, width, 3)
    assert pixels.std() > 0
    return pixels


@pytest.mark.parametrize(("channels", "filters"), [(1, 6), (3, 16), (5, 7)])
def test_filter_grid_has_one_tile_per_first_layer_filter(tiny_data: Callable[..., ImageData],
                                                         tiny_net: Callable[..., ConvNet],
                                                         channels: int, filters: int) -> None:
    net = tiny_net(tiny_data(channels=channels), filters=(filters, 8))

    grid = filter_grid(net)

    rows, cols = grid.grid_shape
    assert grid.n_tiles == first_conv(net).out_channels == filters
    assert rows * cols >= filters > (rows - 1) * cols
    t = grid.tile_size
    assert grid.image.shape == (rows * t + (rows + 1) * GAP_PX, cols * t + (cols + 1) * GAP_PX, 3)
    assert grid.image.dtype == np.uint8
    assert (grid.image[:GAP_PX] == 255).all() and (grid.image[:, :GAP_PX] == 255).all()  # visible gaps
    tile = grid.image[GAP_PX:GAP_PX + t, GAP_PX:GAP_PX + t]
    assert tile.min() == 0 and tile.max() == 255  # each tile normalised on its own
    grey = channels != 3
    assert (tile[..., 0] == tile[..., 2]).all() == grey


def test_a_tiny_filter_is_as_visible_as_a_large_one(tiny_data: Callable[..., ImageData],
                                                    tiny_net: Callable[..., ConvNet]) -> None:
    net = tiny_net(tiny_data())
    with torch.no_grad():
        first_conv(net).weight[0] *= 1e-4

    grid = filter_grid(net)

    t = grid.tile_size
    first = grid.image[GAP_PX:GAP_PX + t, GAP_PX:GAP_PX + t]
    assert first.min() == 0 and first.max() == 255


def test_activation_maps_show_each_image_through_each_block(tiny_data: Callable[..., ImageData],
                                                            tiny_net: Callable[..., ConvNet], tmp_path: Path) -> None:
    data = tiny_data()
    net = tiny_net(data, filters=(6, 12, 8))

    fig = activation_maps(net, data.val.images[:3])

    assert len(fig.axes) == 3 * (1 + 3)  # rows = images, columns = input + blocks
    assert [ax.get_title().split(":")[0] for ax in fig.axes[:4]] == ["input", "block1", "block2", "block3"]
    assert all(not block._forward_hooks for block in net.blocks)
    _saved_png(fig, tmp_path / "activations.png")


def test_confusion_matrix_names_classes_and_shows_counts(tmp_path: Path) -> None:
    confusion = torch.tensor([[5, 1, 0], [2, 7, 0], [0, 3, 4]])

    fig = confusion_matrix_image(confusion, ["cat", "dog", "eel"])

    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog", "eel"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cat", "dog", "eel"]
    assert [t.get_text() for t in ax.texts] == [str(n) for n in confusion.flatten().tolist()]
    assert "16/22" in ax.get_title()
    _saved_png(fig, tmp_path / "confusion.png")


def test_misclassified_grid_titles_true_then_predicted(tmp_path: Path) -> None:
    images = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    preds = torch.tensor([0, 2, 2, 1, 1, 0])

    fig = misclassified_grid(images, labels, preds, ["a", "b", "c"])

    assert fig is not None
    assert [ax.get_title() for ax in fig.axes if ax.get_title()] == ["b → c", "a → b", "c → a"]
    _saved_png(fig, tmp_path / "misclassified.png")
    assert misclassified_grid(images, labels, labels, ["a", "b", "c"]) is None


def test_log_cnn_views_logs_every_view(tiny_data: Callable[..., ImageData], tiny_net: Callable[..., ConvNet],
                                       mlflow_client: object, run_id: str, tmp_path: Path,
                                       listed: Callable[[str], set[str]],
                                       read_artifact: Callable[[str], str]) -> None:
    data = tiny_data(n=12)

    paths = log_cnn_views(mlflow_client, run_id, tiny_net(data), data, tmp_path / "work")

    assert set(paths) == listed("cnn") == CNN_FILES
    per_class = json.loads(read_artifact("cnn/per_class_accuracy.json"))
    assert list(per_class["per_class"]) == data.class_names
    assert sum(c["n"] for c in per_class["per_class"].values()) == len(data.val)
    assert read_artifact("cnn/notes.txt") == "every view was drawn\n"


def test_log_cnn_views_notes_views_it_cannot_draw(tiny_data: Callable[..., ImageData],
                                                  tiny_net: Callable[..., ConvNet], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    class Client:
        def log_artifacts(self, run_id: str, local_dir: str, artifact_path: str) -> None:
            self.notes = (Path(local_dir) / "notes.txt").read_text()

    def broken(model: torch.nn.Module) -> None:
        raise RuntimeError("boom")

    data = tiny_data(n=12)
    net = tiny_net(data)
    data.val.labels = evaluate_model(net, data.val, data.num_classes)["preds"]  # the net is now always right
    monkeypatch.setattr(cnn_views, "filter_grid", broken)
    client = Client()

    paths = log_cnn_views(client, "run", net, data, tmp_path)

    assert set(paths) == CNN_FILES - {"cnn/filters.png", "cnn/misclassified.png"}
    assert client.notes == ("filters: failed: RuntimeError: boom\n"
                            "misclassified: every validation image is classified correctly\n")
