"""A trained net saved as data only, and loaded back without unpickling anything.

A saved net is a folder of two files: `weights.pt`, the state dict (tensors only, read with
`torch.load(weights_only=True)`), and `spec.json`, what `build_convnet` needs to rebuild the
module: the `ArchSpec`, the input shape (C, H, W), the number of classes and the dataset's
normalisation. Whoever can write to a shared artifact store can change these files, but
cannot make the reader run code, as a pickled module would.

The module is also MLflow's `loader_module` for the logged models (`_load_pyfunc`), so a
registered model loads through `mlflow.pyfunc.load_model` and predicts raw uint8 images.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convsweep.errors import ConvsweepError
from convsweep.lightning_modules.arch import ArchSpec
from convsweep.lightning_modules.network import ConvNet, build_convnet

WEIGHTS = "weights.pt"
SPEC = "spec.json"
FORMAT = 1  # the layout of spec.json
FOLDER = "convnet"  # the saved net's folder name; MLflow copies it into a logged model as data/convnet


def save_net(net: ConvNet, folder: str | Path) -> Path:
    """Write `net` as `weights.pt` + `spec.json` into `folder` (created); returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", memory_format=torch.contiguous_format).clone() for k, v in net.state_dict().items()}
    torch.save(state, folder / WEIGHTS)
    spec = {"format": FORMAT, "arch": net.spec.to_dict(), "input_shape": list(net.input_shape),
            "num_classes": net.num_classes,
            "mean": net.input_norm.mean.flatten().tolist(), "std": net.input_norm.std.flatten().tolist()}
    (folder / SPEC).write_text(json.dumps(spec, indent=2))
    return folder


def load_net(folder: str | Path) -> ConvNet:
    """Rebuild a saved net with `build_convnet` and load its weights as tensors only; in eval mode, on CPU.

    Raises:
        ConvsweepError: the folder is not a saved convsweep net.
    """
    folder = Path(folder)
    if not (folder / SPEC).is_file() or not (folder / WEIGHTS).is_file():
        raise ConvsweepError(f"{folder} is not a saved convsweep model (it needs {SPEC} and {WEIGHTS})")
    spec = json.loads((folder / SPEC).read_text())
    if spec.get("format") != FORMAT:
        raise ConvsweepError(f"{folder / SPEC} has format {spec.get('format')!r}; this convsweep reads format {FORMAT}")
    net = build_convnet(ArchSpec.from_dict(spec["arch"]), tuple(spec["input_shape"]), int(spec["num_classes"]),
                        tuple(spec["mean"]), tuple(spec["std"]))
    net.load_state_dict(torch.load(folder / WEIGHTS, map_location="cpu", weights_only=True))
    return net.eval()


def load_logged_net(model_dir: str | Path) -> ConvNet:
    """The net of an MLflow model logged by convsweep and downloaded to `model_dir`, read as data only.

    Only our two files are read: neither the model's `MLmodel` (whose `loader_module` could
    name any module) nor any pickle.
    """
    return load_net(Path(model_dir) / "data" / FOLDER)


class SavedNetPredictor:
    """What `mlflow.pyfunc.load_model` returns the predictions of: raw uint8 images in, logits out."""

    def __init__(self, net: ConvNet) -> None:
        self.net = net

    @torch.no_grad()
    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        """uint8 (B, C, H, W) pixels -> float32 (B, num_classes) logits; normalisation is inside the net."""
        return self.net(torch.as_tensor(np.asarray(model_input))).float().numpy()


def _load_pyfunc(data_path: str) -> SavedNetPredictor:
    """MLflow's `loader_module` protocol: `data_path` is the saved folder, copied into the logged model."""
    return SavedNetPredictor(load_net(data_path))
