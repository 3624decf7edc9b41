"""A few-trial sweep on real data, checked through Optuna's storage and MLflow's own client."""

from __future__ import annotations

import mlflow
import optuna
import pytest
from mlflow.tracking import MlflowClient
from optuna.samplers._gp.sampler import _RELATIVE_PARAMS_KEY
from rich.console import Console

from convsweep.dashboards.leaderboard import MODEL_URI
from convsweep.errors import ConvsweepError
from convsweep.lightning_modules.data import load_dataset
from convsweep.search import run_records as tracking
from convsweep.search.storage import resolve_locations
from convsweep.search.preflight import prepare_sweep
from convsweep.search.studies import ensure_study_exists
from convsweep.search.sweep import run_sweep

TS = optuna.trial.TrialState


def quiet() -> Console:
    return Console(quiet=True)


def children(client: MlflowClient, exp_id: str, parent_id: str) -> list:
    runs = client.search_runs([exp_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and tags.`{tracking.ROLE}` = 'trial'")
    return sorted(runs, key=lambda r: int(r.data.tags[tracking.TRIAL]))


@pytest.mark.slow
def test_sweep_records_parent_children_params_metrics_and_resumes(tiny_cfg) -> None:
    cfg = tiny_cfg("pruner=none")
    summary = run_sweep(prepare_sweep(cfg), quiet())
    loc = resolve_locations(cfg.tracking)
    study = ensure_study_exists(loc, "tiny")
    assert [t.state for t in study.trials] == [TS.COMPLETE] * 3
    # the configured metric reached the pruner's intermediate values, one per epoch
    for t in study.trials:
        assert sorted(t.intermediate_values) == [0, 1]
        assert t.value == max(t.intermediate_values.values())

    client = MlflowClient(loc.mlflow_uri)
    exp = client.get_experiment_by_name("tiny")
    parents = client.search_runs([exp.experiment_id], filter_string=f"tags.`{tracking.ROLE}` = 'parent'")
    assert len(parents) == 1 and parents[0].info.run_id == summary.parent_run_id
    parent = parents[0]
    assert parent.data.params["sampler"] == "tpe" and parent.data.params["pruner"] == "none"
    assert parent.data.tags["best.run_id"] == summary.best_run_id
    assert "search_space.yaml" in [a.path for a in client.list_artifacts(parent.info.run_id)]

    kids = children(client, exp.experiment_id, parent.info.run_id)
    assert len(kids) == 3
    for run, trial in zip(kids, study.trials):
        params = run.data.params
        assert params["depth"] == str(trial.params["depth"])
        assert params["block1.kernel_size"] == str(trial.params["block1.kernel_size"])
        assert ("block2.filters" in params) == (trial.params["depth"] >= 2)
        history = client.get_metric_history(run.info.run_id, "val/acc")
        assert [(m.step, round(m.value, 6)) for m in sorted(history, key=lambda m: m.step)] == \
            [(s, round(v, 6)) for s, v in sorted(trial.intermediate_values.items())]
        assert {"train/loss", "val/loss", "model/params", "model/macs", "duration_s"} <= set(run.data.metrics)
        assert run.data.tags[tracking.STATE] == "COMPLETE" and run.info.status == "FINISHED"
        assert run.data.tags["env.git_commit"] and run.data.tags["data.fingerprint"]
        assert "config.yaml" in [a.path for a in client.list_artifacts(run.info.run_id)]

    best = study.best_trial
    uri = client.get_run(best.user_attrs["mlflow_run_id"]).data.tags[MODEL_URI]  # logged after the trial ended
    model = mlflow.pyfunc.load_model(uri)  # raw uint8 images in, logits out
    x = load_dataset(cfg.dataset).val.images[:16].numpy()
    assert model.predict(x).shape == (16, 10)

    again = run_sweep(prepare_sweep(cfg), quiet())  # same study + storage: resume, not restart
    assert again.resumed and again.parent_run_id == summary.parent_run_id
    assert len(ensure_study_exists(loc, "tiny").trials) == 6
    assert len(children(client, exp.experiment_id, parent.info.run_id)) == 6


@pytest.mark.slow
def test_deterministic_pruner_prunes_and_mlflow_records_it(tiny_cfg) -> None:
    cfg = tiny_cfg("pruner=threshold", "pruner.lower=1.5", "pruner.n_warmup_steps=0", "search.n_trials=2")
    run_sweep(prepare_sweep(cfg), quiet())
    loc = resolve_locations(cfg.tracking)
    study = ensure_study_exists(loc, "tiny")
    assert [t.state for t in study.trials] == [TS.PRUNED] * 2
    assert all(list(t.intermediate_values) == [0] for t in study.trials)
    client = MlflowClient(loc.mlflow_uri)
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.`{tracking.ROLE}` = 'trial'")
    assert {r.data.tags[tracking.STATE] for r in runs} == {"PRUNED"}
    assert {r.info.status for r in runs} == {"KILLED"}
    assert all("pruned at epoch 0" in r.data.tags[tracking.REASON] for r in runs)


@pytest.mark.slow
def test_collapsing_architectures_end_pruned_with_the_reason_and_the_sweep_goes_on(tiny_cfg) -> None:
    cfg = tiny_cfg("search_space.depth=4", "search_space.block.downsample=maxpool", "search_space.block.padding_mode=zeros",
                   "search.n_trials=2", "search.max_refused=1")
    run_sweep(prepare_sweep(cfg), quiet())
    study = ensure_study_exists(resolve_locations(cfg.tracking), "tiny")
    assert [t.state for t in study.trials] == [TS.PRUNED] * 3  # one refusal given back to n_trials, then they count
    assert all("feature map collapses" in t.user_attrs["invalid_reason"] for t in study.trials)
    failed = tiny_cfg("search_space.depth=4", "search_space.block.downsample=maxpool", "search.n_trials=1",
                      "search.fail_on_collapse=failed", study="tiny-fail")
    run_sweep(prepare_sweep(failed), quiet())
    assert ensure_study_exists(resolve_locations(failed.tracking), "tiny-fail").trials[0].state == TS.FAIL


@pytest.mark.parametrize(("override", "message"), [
    ("search.metric=val/accuracy", "unknown metric 'val/accuracy'"),
    ("search.direction=minimize", "does not fit val/acc"),
    ("search_space.depth.low=0", "depth must be integers >= 1"),
    ("sampler=grid", "head.dropout is a continuous range; give it a step or choices for sampler=grid"),
    ("search.objectives=[val/acc:maximize,model/size:minimize]", "unknown objective 'model/size'"),
    ("search.objectives=[val/acc:maximize,model/params:maximize]", "use model/params:minimize"),
    ("search.objectives=[val/acc:max,model/params]", "the direction must be maximize or minimize"),
    ("search.objectives=[model/params:minimize,val/acc:maximize]", "must start with the sweep's metric"),
    ("search.objectives=[val/acc,model/params,model/params]", "'model/params' appears twice"),
])
def test_bad_input_fails_before_anything_is_written(tiny_cfg, override: str, message: str) -> None:
    cfg = tiny_cfg(override)
    with pytest.raises(ConvsweepError, match=message):
        prepare_sweep(cfg)
    assert not resolve_locations(cfg.tracking).run_dir.exists()


@pytest.mark.slow
def test_compute_budget_prunes_costly_architectures_before_training(tiny_cfg) -> None:
    cfg = tiny_cfg("search.max_macs=10", "search.n_trials=2", "search.max_refused=2")
    summary = run_sweep(prepare_sweep(cfg), quiet())
    assert summary.n_pruned == summary.n_refused == 4 and summary.n_complete == 0
    study = ensure_study_exists(resolve_locations(cfg.tracking), "tiny")
    assert [t.state for t in study.trials] == [TS.PRUNED] * 4  # two refusals given back to n_trials, then they count
    assert all("exceeds the budget search.max_macs" in t.user_attrs["invalid_reason"] for t in study.trials)
    assert all(not t.intermediate_values for t in study.trials)  # no epoch was trained


@pytest.mark.slow
def test_the_gp_sampler_proposes_and_successive_halving_prunes(tiny_cfg) -> None:
    """One start-up trial of six, so the GP proposes the other five (it records each proposal in the trial's
    system attrs). Successive halving's first rung is epoch 1 (min_resource=1) and, with fewer than six
    trials there, only the best so far is promoted: a trial that is not ends PRUNED after that epoch."""
    cfg = tiny_cfg("sampler=gp", "sampler.n_startup_trials=1", "pruner=successive_halving", "search.n_trials=6",
                   "trainer.max_epochs=3")  # rung 0 at epoch 1 is not the last epoch, so it can prune
    run_sweep(prepare_sweep(cfg), quiet())
    trials = ensure_study_exists(resolve_locations(cfg.tracking), "tiny").trials
    assert len(trials) == 6 and all(t.state in (TS.COMPLETE, TS.PRUNED) for t in trials)

    proposed = [t.number for t in trials if any(key.startswith(_RELATIVE_PARAMS_KEY) for key in t.system_attrs)]
    assert proposed and 0 not in proposed  # trial 0 is the random start-up trial
    halved = [t for t in trials if t.state == TS.PRUNED and "completed_rung_0" in t.system_attrs]
    assert halved and all(sorted(t.intermediate_values) == [0, 1] for t in halved)
    for t in halved:  # a better value had reached the rung first
        earlier = [e.system_attrs["completed_rung_0"] for e in trials[:t.number] if "completed_rung_0" in e.system_attrs]
        assert max(earlier) > t.system_attrs["completed_rung_0"]
    assert trials[0].state == TS.COMPLETE


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    ("sampler=grid", "search_space.depth=1", "search_space.head.dropout=0.0", "search_space.optim.lr=0.01",
     "search_space.optim.weight_decay=0.0", "search_space.block.activation=relu",
     "search_space.block.padding_mode=zeros"),
])
def test_other_samplers_and_pruners_run_a_sweep(tiny_cfg, overrides: tuple[str, ...]) -> None:
    cfg = tiny_cfg(*overrides, "search.n_trials=2", "trainer.max_epochs=1")
    run_sweep(prepare_sweep(cfg), quiet())
    study = ensure_study_exists(resolve_locations(cfg.tracking), "tiny")
    assert len(study.trials) == 2 and all(t.state.is_finished() for t in study.trials)
    assert any(t.state == TS.COMPLETE for t in study.trials)
    if "sampler=grid" in overrides:
        assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 2  # distinct grid points
