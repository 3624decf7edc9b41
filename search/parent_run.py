"""The parent run of a sweep: one per study, reopened when the study resumes, ended on every path."""

from __future__ import annotations

from typing import Any, Mapping

from convsweep.search.run_records import ROLE, STUDY, log_batch


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


def open_sweep_run(plan: Any, study: Any) -> bool:
    """Create or reopen the study's parent run, record the sweep's config on it; returns `resumed`.

    Sets `plan.experiment_id` and `plan.parent_run_id`. The caller must end the run
    (`client.set_terminated`) on every path from here on.
    """
    from omegaconf import OmegaConf

    from convsweep.search.masking import to_yaml
    from convsweep.search.storage import experiment_id

    cfg, client = plan.cfg, plan.client
    plan.experiment_id = experiment_id(client, str(cfg.tracking.experiment_name), plan.locations)
    plan.parent_run_id, resumed = start_parent_run(
        client, plan.experiment_id, study.study_name,
        params={"study_name": study.study_name, "sampler": cfg.choices.sampler, "pruner": cfg.choices.pruner,
                "search_space": cfg.choices.search_space, "dataset": plan.data.name, "metric": str(cfg.search.metric),
                "direction": cfg.search.direction, "seed": cfg.search.seed},
        tags={STUDY: study.study_name, **{f"storage.{k}": v for k, v in plan.locations.describe().items()}})
    study.set_user_attr("mlflow_parent_run_id", plan.parent_run_id)
    client.log_text(plan.parent_run_id, OmegaConf.to_yaml(cfg.search_space), "search_space.yaml")
    client.log_text(plan.parent_run_id, to_yaml(cfg), "sweep_config.yaml")
    return resumed
