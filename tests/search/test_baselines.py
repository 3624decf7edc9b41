"""`search.enqueue`: named architectures mapped to trial params, refused before anything starts when
the space cannot express them, and run once per study as the sweep's first trials."""

from __future__ import annotations

import optuna
import pytest
from omegaconf import OmegaConf
from rich.console import Console

from convsweep.errors import ConvsweepError
from convsweep.lightning_modules.arch import ArchSpec, BlockSpec, OptimSpec
from convsweep.search.baselines import BASELINE_ATTR, check_baselines, enqueue_baselines, load_arch
from convsweep.search.compose import compose_config
from convsweep.search.preflight import prepare_sweep
from convsweep.search.space import SpaceMismatchError, parse_space
from convsweep.search.storage import resolve_locations

SHAPES = ((1, 28, 28), 6)  # the default dataset's input shape and classes


def space_and_cfg(*overrides: str):
    cfg = compose_config(list(overrides))
    return parse_space(OmegaConf.to_container(cfg.search_space), "conf/search_space/default.yaml"), cfg


def memory_study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    return optuna.create_study(direction="maximize")


@pytest.mark.parametrize("name", ["small", "vgg_small", "resnet_small"])
def test_the_default_space_samples_each_enqueued_arch_exactly(name: str) -> None:
    space, cfg = space_and_cfg(f"search.enqueue=[{name}]")
    [baseline] = check_baselines(cfg, space, *SHAPES)
    arch = load_arch(name)
    assert baseline.params["depth"] == arch.depth
    assert [baseline.params[f"block{i}.convs"] for i in (1, 2, 3)] == [b.convs for b in arch.blocks]
    assert [baseline.params[f"block{i}.residual"] for i in (1, 2, 3)] == [b.residual for b in arch.blocks]
    study = memory_study()
    enqueue_baselines(study, space, cfg)
    trial = study.ask()
    sampled, optim = space.sample(trial)
    assert sampled.blocks == arch.blocks and sampled.stem == arch.stem
    assert (sampled.head.pooling, sampled.head.fc_layers) == (arch.head.pooling, arch.head.fc_layers)
    assert optim == OptimSpec.from_dict(OmegaConf.to_container(cfg.optim))
    assert trial.user_attrs[BASELINE_ATTR] == name and trial.params == baseline.params


@pytest.mark.parametrize(("overrides", "message"), [
    (["search.enqueue=[small,lenet5]"], "search.enqueue: lenet5 does not fit conf/search_space/default.yaml: "
                                        "block1.filters=6, but the space's choices are 8, 16, 32, 64"),
    (["search.enqueue=[resnet_small]", "search_space.block.residual=false"],
     "search.enqueue: resnet_small does not fit conf/search_space/default.yaml: block1.residual=True, "
     "but the space fixes it at False"),
    (["search.enqueue=[small]", "optim.lr=0.5"], "search.enqueue: small does not fit conf/search_space/default.yaml: "
                                                 "optim.lr=0.5, but the space's range is [0.002, 0.01]"),
    (["search.enqueue=[resnet_small]", "search.max_macs=1e6"], "search.enqueue: resnet_small has 2,686,592 macs, "
                                                                "over search.max_macs=1e+06"),
    (["search.enqueue=[resnet]"], "search.enqueue: unknown arch 'resnet'; choose from: lenet5, resnet_small, small"),
])
def test_an_arch_that_does_not_fit_is_refused_in_one_line(overrides: list[str], message: str) -> None:
    space, cfg = space_and_cfg(*overrides)
    with pytest.raises(ConvsweepError) as err:
        check_baselines(cfg, space, *SHAPES)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_a_choice_the_space_does_not_ask_must_keep_its_default() -> None:
    space = parse_space({"depth": 1, "widths": {"filters": 16},
                         "block": {"kernel_size": {"type": "categorical", "choices": [1, 3]},
                                   "bottleneck": {"type": "categorical", "choices": [0, 2]}}}, "space.yaml")
    assert space.params_for(ArchSpec((BlockSpec(16, 3, bottleneck=2),)), OptimSpec())["block1.bottleneck"] == 2
    with pytest.raises(SpaceMismatchError, match="block1.bottleneck=2, but the space gives 0 there"):
        space.params_for(ArchSpec((BlockSpec(16, 1, bottleneck=2),)), OptimSpec())  # not asked for a 1x1 conv


def test_enqueue_runs_each_baseline_once_per_study() -> None:
    space, cfg = space_and_cfg("search.enqueue=[small,resnet_small]")
    study = memory_study()
    assert enqueue_baselines(study, space, cfg) == ["small", "resnet_small"]
    assert enqueue_baselines(study, space, cfg) == []  # a resumed sweep: already queued
    trial = study.ask()
    study.tell(trial, 0.5)  # the first baseline ran
    _, more = space_and_cfg("search.enqueue=[small,vgg_small]")
    assert enqueue_baselines(study, space, more) == ["vgg_small"]
    assert [t.user_attrs[BASELINE_ATTR] for t in study.trials] == ["small", "resnet_small", "vgg_small"]


def test_a_sweep_with_an_unfit_baseline_writes_nothing(tiny_cfg) -> None:
    cfg = tiny_cfg("search.enqueue=[small]")  # the tiny space has at most 2 blocks
    with pytest.raises(SpaceMismatchError, match="small does not fit .*: depth=3, but the space's range is "):
        prepare_sweep(cfg)
    assert not resolve_locations(cfg.tracking).run_dir.exists()


@pytest.mark.slow
def test_baselines_are_the_sweeps_first_trials_and_are_not_repeated_on_resume(tiny_cfg) -> None:
    from convsweep.search.studies import ensure_study_exists
    from convsweep.search.sweep import run_sweep

    cfg = tiny_cfg("search.enqueue=[small,vgg_small]", "search_space.depth.high=3",
                   "search_space.widths.filters.choices=[4,8,16,32,64]", "search.n_trials=2", "trainer.max_epochs=1",
                   "pruner=none")
    run_sweep(prepare_sweep(cfg), Console(quiet=True))
    cfg.search.n_trials = 1
    run_sweep(prepare_sweep(cfg), Console(quiet=True))  # resume: one more trial, and no baseline again
    study = ensure_study_exists(resolve_locations(cfg.tracking), "tiny")
    assert [t.user_attrs.get(BASELINE_ATTR) for t in study.trials] == ["small", "vgg_small", None]
    assert [t.state for t in study.trials[:2]] == [optuna.trial.TrialState.COMPLETE] * 2
    assert study.trials[0].params["block3.filters"] == 64 and study.trials[1].params["block1.convs"] == 2
