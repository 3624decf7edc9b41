"""Run records on a real SQLite MLflow store: `log_batch` relies on `MlflowClient.log_batch` to chunk."""

from __future__ import annotations

from pathlib import Path

from mlflow import MlflowClient
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

from convsweep.search.run_records import log_batch


def test_one_log_batch_call_stores_more_than_mlflows_per_request_limits(mlflow_client: MlflowClient,
                                                                         tmp_path: Path) -> None:
    """MLflow's store rejects a request over 1000 metrics or 100 params/tags; the client splits ours."""
    client = mlflow_client
    experiment = client.create_experiment(f"batch-{tmp_path.name}", artifact_location=tmp_path.as_uri())
    run_id = client.create_run(experiment).info.run_id
    metrics = {f"m{i:04d}": i / 7 for i in range(MAX_METRICS_PER_BATCH + 500)}
    params = {f"p{i:03d}": f"value-{i}" for i in range(MAX_PARAMS_TAGS_PER_BATCH + 50)}
    tags = {f"t{i:03d}": i for i in range(MAX_PARAMS_TAGS_PER_BATCH + 20)}

    log_batch(client, run_id, metrics=metrics, step=3, params=params, tags=tags)

    data = client.get_run(run_id).data
    assert data.metrics == metrics
    assert data.params == params
    assert {k: v for k, v in data.tags.items() if k.startswith("t")} == {k: str(v) for k, v in tags.items()}
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "m1499")] == [(3, 1499 / 7)]
