"""Trial models logged in the background: the run ends once its model is in, and says so; a failure says why."""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import optuna

from convsweep.dashboards.leaderboard import MODEL_URI, trial_model_uri
from convsweep.lightning_modules.arch import ArchSpec
from convsweep.lightning_modules.network import build_convnet
from convsweep.search import run_records as rr
from convsweep.search.compose import compose_config
from convsweep.search.model_queue import MODEL_ERROR, ModelQueue
from convsweep.search.recovery import recover
from tests.search.records import Stores

SHAPE = (1, 8, 8)


def small_net():  # noqa: ANN201 - a ConvNet
    return build_convnet(ArchSpec.from_dict(compose_config(["dataset=digits"]).arch), SHAPE, 10)


def complete(s: Stores) -> optuna.trial.FrozenTrial:
    """A trial told COMPLETE whose run is still RUNNING: what the sweep leaves while its model is being logged."""
    trial = s.running(lease=None)
    s.study.tell(trial.number, 0.5)
    return s.study.trials[trial.number]


def test_a_queued_model_lands_then_its_run_ends_with_its_uri(tmp_path: Path, migrated_mlflow_db: Path) -> None:
    s = Stores(migrated_mlflow_db, tmp_path / "runs")
    trial = complete(s)
    run_id = trial.user_attrs["mlflow_run_id"]
    assert trial_model_uri(s.client, trial) is None  # not yet: nothing claims a model that is not in the store
    queue = ModelQueue()
    queue.log_and_finish(s.client, run_id, small_net(), SHAPE, {"val/acc_best": 0.5}, {"device": "cpu"})
    queue.close()
    run = s.client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags[rr.STATE] == "COMPLETE" and run.data.tags["device"] == "cpu"
    assert run.data.metrics["val/acc_best"] == 0.5
    uri = trial_model_uri(s.client, trial)
    assert uri == run.data.tags[MODEL_URI]
    images = np.zeros((3, *SHAPE), dtype=np.uint8)
    assert mlflow.pyfunc.load_model(uri).predict(images).shape == (3, 10)


def test_a_model_that_cannot_be_logged_leaves_its_error_and_the_run_still_ends(tmp_path: Path,
                                                                              migrated_mlflow_db: Path) -> None:
    s = Stores(migrated_mlflow_db, tmp_path / "runs")
    trial = complete(s)
    queue = ModelQueue()
    queue.log_and_finish(s.client, trial.user_attrs["mlflow_run_id"], object(), SHAPE, {}, {})  # not a net
    queue.close()
    run = s.client.get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "FINISHED" and MODEL_URI not in run.data.tags
    assert run.data.tags[MODEL_ERROR] == "AttributeError: 'object' object has no attribute 'eval'"
    assert trial_model_uri(s.client, trial) is None


def test_a_run_whose_worker_died_while_its_model_was_logged_ends_without_a_model(tmp_path: Path,
                                                                                 migrated_mlflow_db: Path) -> None:
    """Killed between the trial's COMPLETE and the model's arrival: the recovery ends the run FINISHED, and no
    model is claimed anywhere."""
    s = Stores(migrated_mlflow_db, tmp_path / "runs")
    trial = complete(s)
    recover(s.study, s.client, s.exp, grace_period=3600, retry=False, journal=True)
    run = s.client.get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags[rr.STATE] == "COMPLETE"
    assert trial_model_uri(s.client, trial) is None


def test_studies_made_before_the_queue_keep_their_model_attr(tmp_path: Path, migrated_mlflow_db: Path) -> None:
    s = Stores(migrated_mlflow_db, tmp_path / "runs")
    trial = s.running(lease=None)
    optuna_trial = optuna.trial.Trial(s.study, trial._trial_id)  # noqa: SLF001 - to set the attr an old version set
    optuna_trial.set_user_attr("model_uri", "models:/m-old")
    s.study.tell(trial.number, 0.5)
    assert trial_model_uri(s.client, s.study.trials[trial.number]) == "models:/m-old"
