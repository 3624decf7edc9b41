"""`train_and_track`: train one fixed configuration and record it as an MLflow run.

Used by `convsweep train`, and by `reproduce`, which re-runs a trial's stored config
through exactly this path and compares the per-epoch metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from omegaconf import DictConfig, OmegaConf

from convsweep.lightning_modules.arch import ArchSpec, OptimSpec
from convsweep.lightning_modules.data import ImageData, load_dataset
from convsweep.lightning_modules.data.base import Split
from convsweep.lightning_modules.runner import DivergedError, EpochHistory, TrainResult, train_model
from convsweep.search import run_records as rr
from convsweep.search.dataset_inputs import data_tags, log_dataset
from convsweep.search.environment import environment_record
from convsweep.search.masking import mask_uri, to_yaml
from convsweep.search.model_logging import log_model as log_mlflow_model
from convsweep.search.objective import run_params, summary_metrics
from convsweep.search.preflight import check_metric
from convsweep.search.storage import experiment_id, init_mlflow, resolve_locations


@dataclass
class TrackedRun:
    """A training run and where it was recorded."""

    run_id: str
    result: TrainResult
    data: ImageData
    model_uri: str | None
    client: Any  # the MlflowClient the run was logged with


def specs_from_config(cfg: DictConfig) -> tuple[ArchSpec, OptimSpec]:
    """The (ArchSpec, OptimSpec) a config describes; unknown keys are refused."""
    return (ArchSpec.from_dict(OmegaConf.to_container(cfg.arch)),
            OptimSpec.from_dict(OmegaConf.to_container(cfg.optim)))


def train_and_track(cfg: DictConfig, role: str = "train", tags: Mapping[str, Any] | None = None,
                    run_name: str | None = None, log_model: bool = True, data: ImageData | None = None,
                    parent_run_id: str | None = None, train_split: Split | None = None,
                    registered_name: str | None = None) -> TrackedRun:
    """Train `cfg.arch` with `cfg.optim` and `cfg.seed`, logging a run to the study's experiment.

    Args:
        cfg: a composed config (or one read back from a file or a run).
        role: the `convsweep.role` tag (train | reproduction | evaluation).
        tags: extra run tags (e.g. the run this reproduces).
        run_name: MLflow run name.
        log_model: log the trained net as an MLflow model.
        data: an already loaded dataset (defaults to loading `cfg.dataset`).
        parent_run_id: nest the run under this one (e.g. the study's parent run).
        train_split: train on this split instead of `data.train` (e.g. train+val).
        registered_name: also register the logged model under this name.
    """
    check_metric(cfg)
    arch, optim = specs_from_config(cfg)
    data = data or load_dataset(cfg.dataset)
    metric, direction = str(cfg.search.metric), str(cfg.search.direction)
    loc = resolve_locations(cfg.tracking)
    client = init_mlflow(loc)
    exp_id = experiment_id(client, str(cfg.tracking.experiment_name), loc)
    env = {f"env.{k}": v for k, v in environment_record().items()}
    run_id = rr.start_child_run(client, exp_id, parent_run_id, run_name or f"{role}-{data.name}", role,
                                params={**run_params({}, arch, optim), "seed": cfg.seed},
                                tags={**env, **data_tags(data), **(tags or {})}, config_yaml=to_yaml(cfg))
    log_dataset(client, run_id, data)
    history = EpochHistory(metric, direction, listeners=[rr.epoch_logger(client, run_id)])
    try:
        result = train_model(data, arch, optim, cfg.trainer, seed=int(cfg.seed), metric=metric, direction=direction,
                             history=history, train_split=train_split)
    except DivergedError as exc:
        rr.finish_run(client, run_id, "FAIL", tags={rr.REASON: str(exc)})
        raise DivergedError(f"{exc}: lower optim.lr, or clip gradients with trainer.gradient_clip_val=1.0") from None
    except BaseException as exc:
        rr.finish_run(client, run_id, "FAIL", tags={rr.REASON: mask_uri(f"{type(exc).__name__}: {exc}")[:1000]})
        raise
    model_uri = log_mlflow_model(run_id, result.model, data.input_shape, registered_name) if log_model else None
    metrics = {**summary_metrics(result.history, metric, direction == "maximize"), "duration_s": result.duration_s,
               "model/params": float(result.plan.params), "model/macs": float(result.plan.macs)}
    rr.finish_run(client, run_id, "COMPLETE", metrics, {"device": result.device})
    return TrackedRun(run_id, result, data, model_uri, client)
