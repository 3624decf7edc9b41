"""A run's dataset input, also when two workers record the experiment's dataset at the same moment."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow.exceptions import MlflowException

from convsweep.lightning_modules.data import load_dataset
from convsweep.search.compose import compose_config
from convsweep.search.dataset_inputs import log_dataset
from tests.search.records import Stores

# what MLflow's SQLite store raises for the loser of that race (from a CI run's log)
RACE = ("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name, "
        "datasets.digest")


class LosesTheRaceOnce:
    """The real client, except that its first `log_inputs` fails as the second of two simultaneous inserts does.

    The race itself (two processes between MLflow's lookup and its insert) cannot be made to happen on demand."""

    def __init__(self, client: Any, error: str, other_run_id: str) -> None:
        self.client, self.error, self.other, self.calls = client, error, other_run_id, 0

    def log_inputs(self, run_id: str, datasets: Any) -> None:
        self.calls += 1
        if self.calls == 1:
            self.client.log_inputs(self.other, datasets=datasets)  # the other worker's insert, for its run, lands first...
            raise MlflowException(self.error)  # ...and this one's fails
        self.client.log_inputs(run_id, datasets=datasets)


def test_a_dataset_recorded_by_another_worker_at_once_is_linked_not_an_error(tmp_path: Path,
                                                                            migrated_mlflow_db: Path) -> None:
    s = Stores(migrated_mlflow_db, tmp_path / "runs")
    data = load_dataset(compose_config(["dataset=digits"]).dataset)
    run_id, other = (s.client.create_run(s.exp).info.run_id for _ in range(2))
    client = LosesTheRaceOnce(s.client, RACE, other)
    log_dataset(client, run_id, data)
    assert client.calls == 2
    (recorded,) = s.client.get_run(run_id).inputs.dataset_inputs
    assert recorded.dataset.name == "digits" and recorded.dataset.digest == data.fingerprint[:36]
    (theirs,) = s.client.get_run(other).inputs.dataset_inputs  # one dataset, linked to both runs
    assert theirs.dataset.digest == recorded.dataset.digest


def test_other_store_errors_are_not_retried(tmp_path: Path, migrated_mlflow_db: Path) -> None:
    s = Stores(migrated_mlflow_db, tmp_path / "runs")
    data = load_dataset(compose_config(["dataset=digits"]).dataset)
    run_id, other = (s.client.create_run(s.exp).info.run_id for _ in range(2))
    client = LosesTheRaceOnce(s.client, "database is locked", other)
    with pytest.raises(MlflowException, match="database is locked"):
        log_dataset(client, run_id, data)
    assert client.calls == 1
