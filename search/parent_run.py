"""The parent run of a sweep: one per study, reopened when the study resumes, ended on every path."""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Mapping

import optuna

from convsweep.dashboards.leaderboard import ranked_trials
from convsweep.search.run_records import ROLE, STUDY, log_batch


def find_parent_run(client: Any, experiment_id: str, study_name: str) -> str | None:
    """The study's parent run, if an earlier sweep of the same study made one (resume): the earliest one."""
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{ROLE}` = 'parent' and tags.`{STUDY}` = '{study_name}'",
                              max_results=10, order_by=["attributes.start_time ASC"])
    return min(runs, key=lambda r: (r.info.start_time, r.info.run_id)).info.run_id if runs else None


def start_parent_run(client: Any, experiment_id: str, study_name: str, params: Mapping[str, Any],
                     tags: Mapping[str, Any]) -> tuple[str, bool]:
    """Reopen the study's parent run, or create it; returns (run_id, resumed)."""
    run_id = find_parent_run(client, experiment_id, study_name)
    if run_id is None:
        created = client.create_run(experiment_id, run_name=f"sweep-{study_name}", tags={ROLE: "parent", STUDY: study_name})
        # Two machines that start the same new study at once both get here: all adopt the earliest run,
        # and each deletes its own if it is not that one, so a study keeps one parent run.
        run_id = find_parent_run(client, experiment_id, study_name)
        if run_id == created.info.run_id:
            with ended_on_error(client, run_id):
                log_batch(client, run_id, params=params, tags=tags)
            return run_id, False
        client.delete_run(created.info.run_id)
    client.update_run(run_id, status="RUNNING")
    with ended_on_error(client, run_id):
        log_batch(client, run_id, tags=tags)
    return run_id, True


@contextlib.contextmanager
def ended_on_error(client: Any, run_id: str):  # noqa: ANN201 - a context manager
    """End the run FAILED if the block raises (KILLED on Ctrl-C or SIGTERM): no run stays RUNNING."""
    try:
        yield
    except BaseException as exc:
        with contextlib.suppress(Exception):  # the store may be what failed
            client.set_terminated(run_id, status="KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise


def record_best(client: Any, parent_run_id: str, study: optuna.Study, metric: str, step: int | None = None) -> None:
    """Write the parent run's `best.*` tags from the study, the source of truth.

    Every worker on every machine calls this after each completed trial and the sweep's end
    calls it again: each call writes what the study says now, never what an earlier tag said,
    so concurrent workers cannot leave a stale best behind. With `step`, `best/<metric>` is
    logged too (the best so far, one point per completed trial).
    """
    best = ranked_trials(study, 1)  # by the metric, also in a multi-objective study
    if not best:
        return
    t = best[0]
    log_batch(client, parent_run_id, metrics={f"best/{metric}": t.values[0]} if step is not None else None,
              step=step or 0, tags={"best.trial_number": t.number, "best.run_id": t.user_attrs.get("mlflow_run_id"),
                                    f"best.{metric}": t.values[0], "best.params": str(t.params)[:5000]})


def best_tags_callback(client: Any, parent_run_id: str, metric: str) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """A `study.optimize` callback: `record_best` after each trial that completes."""

    def on_trial_end(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == optuna.trial.TrialState.COMPLETE:
            with contextlib.suppress(Exception):  # a tracking hiccup must not end the worker: the sweep's end writes them again
                record_best(client, parent_run_id, study, metric, step=trial.number)

    return on_trial_end


def open_sweep_run(plan: Any, study: Any) -> bool:
    """Create or reopen the study's parent run, record the sweep's config on it; returns `resumed`.

    Sets `plan.experiment_id` and `plan.parent_run_id`. The run is ended here if this fails;
    once it returns, the caller must end the run (`client.set_terminated`) on every path.
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
    with ended_on_error(client, plan.parent_run_id):
        study.set_user_attr("mlflow_parent_run_id", plan.parent_run_id)
        client.log_text(plan.parent_run_id, OmegaConf.to_yaml(cfg.search_space), "search_space.yaml")
        client.log_text(plan.parent_run_id, to_yaml(cfg), "sweep_config.yaml")
    return resumed
