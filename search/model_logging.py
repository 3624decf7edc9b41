"""Log a trained net as an MLflow model that takes raw uint8 images."""

from __future__ import annotations

import logging
from typing import Any, Iterable

PIP_REQUIREMENTS = ("torch", "torchvision", "lightning", "convsweep")  # skips MLflow's slow requirement inference


def log_model(run_id: str, model: Any, input_shape: Iterable[int], registered_name: str | None = None) -> str:
    """Log a trained net as an MLflow PyTorch model taking raw uint8 images (B, C, H, W).

    Normalisation is inside the model (`InputNorm`), so the signature's input is raw pixels.
    Pickle, not MLflow's traced 'pt2' format: a trace would freeze the uint8-vs-float input branch.
    Returns the model URI.
    """
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import infer_signature

    example = np.zeros((2, *input_shape), dtype=np.uint8)
    with torch.no_grad():
        logits = model(torch.from_numpy(example)).numpy()
    signature = infer_signature(example, logits)
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)  # its pickle warning: chosen on purpose, see above
    with mlflow.start_run(run_id=run_id, nested=True):
        info = mlflow.pytorch.log_model(model, name="model", signature=signature,
                                        pip_requirements=list(PIP_REQUIREMENTS), serialization_format="pickle",
                                        registered_model_name=registered_name)
    return info.model_uri
