"""MLflow records: one experiment per study, a parent run per sweep, a nested child run per trial.

Everything goes through `MlflowClient` with explicit run ids and `log_batch` (0.7 ms per
metric against 5 ms per `log_metric` here), so worker processes never share a fluent
"active run". The only fluent call is `mlflow.pytorch.log_model`, which needs one.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Iterable, Mapping

from lightning.pytorch import Callback, LightningModule, Trainer

from convsweep.lightning_modules.data import ImageData
from convsweep.lightning_modules.runner import EpochHistory

ROLE = "convsweep.role"  # parent | trial | train | reproduction | evaluation
STUDY = "convsweep.study"
TRIAL = "convsweep.trial_number"
STATE = "convsweep.state"  # COMPLETE | PRUNED | FAIL, as Optuna names them
REASON = "convsweep.reason"
MLFLOW_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}
_MAX_PARAM = 6000  # MLflow's limit on a param value's length


def _params(params: Mapping[str, Any]) -> list:
    from mlflow.entities import Param

    return [Param(str(k), str(v)[:_MAX_PARAM]) for k, v in params.items()]


def _metrics(metrics: Mapping[str, float], step: int = 0) -> list:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    return [Metric(k, float(v), now, step) for k, v in metrics.items()]


def _tags(tags: Mapping[str, Any]) -> list:
    from mlflow.entities import RunTag

    return [RunTag(str(k), str(v)[:5000]) for k, v in tags.items()]


def log_batch(client: Any, run_id: str, *, metrics: Mapping[str, float] | None = None, step: int = 0,
              params: Mapping[str, Any] | None = None, tags: Mapping[str, Any] | None = None) -> None:
    """One `log_batch` call (chunked to MLflow's 100 params / 1000 metrics per request)."""
    m, p, t = _metrics(metrics or {}, step), _params(params or {}), _tags(tags or {})
    while m or p or t:
        client.log_batch(run_id, metrics=m[:1000], params=p[:100], tags=t[:1000])
        m, p, t = m[1000:], p[100:], t[1000:]


def find_parent_run(client: Any, experiment_id: str, study_name: str) -> str | None:
    """The study's parent run, if an earlier sweep of the same study made one (resume)."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{ROLE}` = 'parent' and tags.`{STUDY}` = '{study_name}'",
                              max_results=1, order_by=["attributes.start_time ASC"])
    return runs[0].info.run_id if runs else None


def start_parent_run(client: Any, experiment_id: str, study_name: str, params: Mapping[str, Any],
                     tags: Mapping[str, Any]) -> tuple[str, bool]:
    """Reopen the study's parent run, or create it; returns (run_id, resumed)."""
    run_id = find_parent_run(client, experiment_id, study_name)
    if run_id is not None:
        client.update_run(run_id, status="RUNNING")
        log_batch(client, run_id, tags=tags)
        return run_id, True
    run = client.create_run(experiment_id, run_name=f"sweep-{study_name}", tags={ROLE: "parent", STUDY: study_name})
    log_batch(client, run.info.run_id, params=params, tags=tags)
    return run.info.run_id, False


def start_child_run(client: Any, experiment_id: str, parent_id: str, name: str, role: str,
                    params: Mapping[str, Any], tags: Mapping[str, Any], config_yaml: str) -> str:
    """A nested run under `parent_id` with its params, tags and the resolved `config.yaml`."""
    from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

    run = client.create_run(experiment_id, run_name=name, tags={MLFLOW_PARENT_RUN_ID: parent_id, ROLE: role})
    log_batch(client, run.info.run_id, params=params, tags=tags)
    client.log_text(run.info.run_id, config_yaml, "config.yaml")
    return run.info.run_id


def data_tags(data: ImageData) -> dict[str, Any]:
    """The run tags that identify a dataset: name, split sizes and the content fingerprint `reproduce` checks."""
    return {"data.name": data.name, "data.fingerprint": data.fingerprint,
            **{f"data.n_{k}": v for k, v in data.sizes().items()}}


def log_dataset(client: Any, run_id: str, data: ImageData, context: str = "training") -> None:
    """Record the dataset as an MLflow dataset input (name, sizes, content fingerprint)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    info = data.describe()
    dataset = Dataset(name=data.name, digest=data.fingerprint[:36], source_type="convsweep",
                      source=json.dumps({"name": data.name, "source": data.source}),
                      schema=json.dumps({"input_shape": info["input_shape"], "class_names": info["class_names"]}),
                      profile=json.dumps({k: v for k, v in info.items() if k.startswith("n_")}))
    client.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])])


class MlflowEpochLogger(Callback):
    """Logs every epoch's metrics to one run in a single batch, before the pruner can stop the fit.

    It reads the row `EpochHistory` just recorded, so it must come after it in the callback list.
    """

    def __init__(self, client: Any, run_id: str, history: EpochHistory) -> None:
        self.client, self.run_id, self.history = client, run_id, history

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking or not self.history.epochs:
            return
        row = self.history.epochs[-1]
        log_batch(self.client, self.run_id, metrics={k: v for k, v in row.items() if k != "epoch"},
                  step=int(row["epoch"]))


def finish_run(client: Any, run_id: str, state: str, metrics: Mapping[str, float] | None = None,
               tags: Mapping[str, Any] | None = None) -> None:
    """Final metrics and tags, then the MLflow status that matches the Optuna state."""
    log_batch(client, run_id, metrics=metrics, tags={STATE: state, **(tags or {})})
    client.set_terminated(run_id, status=MLFLOW_STATUS.get(state, "FINISHED"))


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
