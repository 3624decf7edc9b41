"""The dataset a run used, recorded as MLflow tags and a dataset input (name, sizes, content fingerprint)."""

from __future__ import annotations

import json
from typing import Any

from convsweep.lightning_modules.data import ImageData


def data_tags(data: ImageData) -> dict[str, Any]:
    """The run tags that identify a dataset: name, split sizes and the content fingerprint `reproduce` checks."""
    return {"data.name": data.name, "data.fingerprint": data.fingerprint,
            **{f"data.n_{k}": v for k, v in data.sizes().items()}}


def log_dataset(client: Any, run_id: str, data: ImageData, context: str = "training") -> None:
    """Record the dataset as an MLflow dataset input (name, sizes, content fingerprint)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.exceptions import MlflowException

    info = data.describe()
    dataset = Dataset(name=data.name, digest=data.fingerprint[:36], source_type="convsweep",
                      source=json.dumps({"name": data.name, "source": data.source}),
                      schema=json.dumps({"input_shape": info["input_shape"], "class_names": info["class_names"]}),
                      profile=json.dumps({k: v for k, v in info.items() if k.startswith("n_")}))
    inputs = [DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])]
    try:
        client.log_inputs(run_id, datasets=inputs)
    except MlflowException as exc:
        # Two workers' first trials can record the experiment's dataset at once: MLflow's store looks it up, finds
        # none in either, and the second insert breaks the (experiment, name, digest) unique key. Once, the
        # dataset exists, and a second call only links it to this run.
        if "unique" not in str(exc).lower():
            raise
        client.log_inputs(run_id, datasets=inputs)
