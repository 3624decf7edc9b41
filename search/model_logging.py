"""Log a trained net as an MLflow model that takes raw uint8 images, with no pickle in it.

The model is MLflow's generic `python_function` flavour with our `loader_module`
(`convsweep.lightning_modules.saved_model`) and the saved net as its data: a state dict
(`weights.pt`, tensors only) and `spec.json` (the `ArchSpec`, input shape, classes and
normalisation). Neither `mlflow.pytorch` (a pickled module) nor a `PythonModel` (a
cloudpickled object; "models from code" runs a .py file from the artifact store) is used, so
loading a model reads data and runs only installed code.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable

PIP_REQUIREMENTS = ("torch", "convsweep")  # skips MLflow's slow requirement inference
LOADER_MODULE = "convsweep.lightning_modules.saved_model"


def log_model(run_id: str, model: Any, input_shape: Iterable[int], registered_name: str | None = None) -> str:
    """Log a trained `ConvNet` to the run as a pyfunc model taking raw uint8 images (B, C, H, W); returns its URI.

    Normalisation is inside the net (`InputNorm`), so the signature's input is raw pixels.
    """
    import mlflow
    import numpy as np
    from mlflow.models import infer_signature

    from convsweep.lightning_modules.saved_model import FOLDER, SavedNetPredictor, save_net

    example = np.zeros((2, *input_shape), dtype=np.uint8)
    signature = infer_signature(example, SavedNetPredictor(model.eval()).predict(example))
    with tempfile.TemporaryDirectory(prefix="convsweep-model-") as tmp, mlflow.start_run(run_id=run_id, nested=True), \
            warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*input example was not provided")  # the signature says it all
        info = mlflow.pyfunc.log_model(name="model", loader_module=LOADER_MODULE,
                                       data_path=str(save_net(model, Path(tmp) / FOLDER)), signature=signature,
                                       pip_requirements=list(PIP_REQUIREMENTS), registered_model_name=registered_name)
    return info.model_uri
