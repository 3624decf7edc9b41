"""Opening and resuming a study: resumed samplers never repeat, the grid walks the conditional space,
and a study keeps the search space it was created with.

Each "invocation" below is what `convsweep sweep` does up to training: check the input
(`prepare_sweep`), open or resume the study (`open_study`), then let the sampler propose
points. The objective samples the architecture and returns without training, so the tests
exercise the real sampler seeding and study storage in seconds.
"""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from convsweep.search.cli import main
from convsweep.search.preflight import SweepPlan, prepare_sweep
from convsweep.search.storage import resolve_locations
from convsweep.search.studies import ensure_study_exists, open_study


def invocation(cfg, n_trials: int, plan: SweepPlan | None = None) -> optuna.Study:
    """One `convsweep sweep` as far as sampling: every trial asks the whole space, none trains.

    A resume opens the study again, with a new sampler, as a new process would (`plan` only
    saves checking the same input again).
    """
    plan = plan or prepare_sweep(cfg)
    study = open_study(plan)
    study.optimize(lambda trial: float(plan.space.sample(trial)[0].depth), n_trials=n_trials)
    return study


def param_sets(study: optuna.Study) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in study.get_trials(deepcopy=False)]


@pytest.mark.slow
def test_resumed_random_sweeps_never_repeat_a_parameter_set(tiny_cfg) -> None:
    cfg = tiny_cfg("sampler=random", study="rnd")
    plan = prepare_sweep(cfg)
    for _ in range(4):  # the first run and three resumes: the same command each time
        study = invocation(cfg, 3, plan)
    sets = param_sets(study)
    assert len(sets) == 12 and len(set(sets)) == 12
    # the seed still makes a fresh study reproducible: the same command on a new study proposes the same points
    plan.cfg.search.study_name = "rnd-again"
    assert param_sets(invocation(cfg, 3, plan)) == sets[:3]


@pytest.mark.slow
def test_grid_walks_every_depth_of_a_conditional_space_once(tiny_cfg) -> None:
    fixed = ["search_space.block.convs=1", "search_space.block.residual=false", "search_space.block.downsample=maxpool",
             "search_space.block.padding_mode=zeros", "search_space.block.pointwise=false",
             "search_space.block.activation=relu", "search_space.stem.filters=0", "search_space.head.pooling=gap",
             "search_space.head.fc_layers=0", "search_space.head.dropout=0.0", "search_space.optim.lr=0.01",
             "search_space.optim.weight_decay=0.0"]
    cfg = tiny_cfg("sampler=grid", "search_space.depth.low=1", "search_space.depth.high=2", *fixed, study="grid")
    study = invocation(cfg, 30)  # BruteForceSampler stops the study once the space is exhausted
    sets = param_sets(study)
    # depth 1: 2 widths x 2 kernels; depth 2: (2 x 2)^2 -- block2.* exists only in depth-2 trials
    assert len(sets) == len(set(sets)) == 4 + 16
    assert {dict(s)["depth"] for s in sets} == {1, 2}
    assert all(("block2.filters" in dict(s)) == (dict(s)["depth"] == 2) for s in sets)


@pytest.mark.slow
def test_resuming_with_another_space_is_refused_before_anything_is_written(tiny_cfg, tmp_path: Path, capsys) -> None:
    invocation(tiny_cfg(study="rs"), 1)
    journal = Path(resolve_locations(tiny_cfg(study="rs").tracking).optuna_url)
    before = journal.read_bytes()
    capsys.readouterr()
    assert main(["sweep", "dataset=digits", "search.study_name=rs", f"tracking.run_dir={tmp_path / 'runs'}",
                 "search_space=wide"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "study 'rs' was created with another search space" in err and "search.study_name=rs-wide" in err
    assert journal.read_bytes() == before  # no trial, no attribute: the study is as it was
    assert len(ensure_study_exists(resolve_locations(tiny_cfg(study="rs").tracking), "rs").trials) == 1
    # the same space resumes
    assert len(invocation(tiny_cfg(study="rs"), 1).trials) == 2

