"""Search-space parsing, validation and define-by-run sampling, on the shipped YAML."""

from __future__ import annotations

import optuna
import pytest
from omegaconf import OmegaConf

from convsweep.search.compose import compose_config
from convsweep.search.space import SearchSpaceError, parse_space


def shipped_space(name: str = "default", *overrides: str):
    cfg = compose_config([f"search_space={name}", *overrides])
    return parse_space(OmegaConf.to_container(cfg.search_space), f"conf/search_space/{name}.yaml")


def sample_many(space, n: int = 40, seed: int = 0) -> list[optuna.trial.FrozenTrial]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    study.optimize(lambda t: float(space.sample(t)[0].depth), n_trials=n)
    return study.trials


@pytest.mark.parametrize("name", ["default", "pyramid", "wide"])
def test_shipped_spaces_parse_and_sample(name: str) -> None:
    space = shipped_space(name)
    arch, optim = space.sample(optuna.trial.FixedTrial({}) if False else optuna.create_study().ask())
    assert arch.depth >= 1 and optim.lr > 0


def test_block_params_exist_only_up_to_the_sampled_depth() -> None:
    trials = sample_many(shipped_space())
    depths = {t.params["depth"] for t in trials}
    assert depths == {1, 2, 3}
    for t in trials:
        depth = t.params["depth"]
        for i in range(1, 4):
            present = any(k.startswith(f"block{i}.") for k in t.params)
            assert present == (i <= depth), (i, depth, sorted(t.params))
        assert "block1.kernel_size" in t.params and "block1.filters" in t.params


def test_conditional_head_and_optim_params() -> None:
    for t in sample_many(shipped_space()):
        assert ("head.fc_width" in t.params) == (t.params["head.fc_layers"] > 0)
        assert ("optim.momentum" in t.params) is False  # momentum is fixed in the default space
        assert "optim.optimizer" not in t.params  # AdamW only in the default space


def test_pyramid_mode_derives_widths_from_base_and_growth() -> None:
    space = shipped_space("pyramid")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(10):
        trial = study.ask()
        arch, _ = space.sample(trial)
        base, growth = trial.params["widths.base_filters"], trial.params["widths.growth"]
        assert [b.filters for b in arch.blocks] == [max(1, round(base * growth ** i)) for i in range(arch.depth)]
        assert not any(k.endswith(".filters") and k.startswith("block") for k in trial.params)
        study.tell(trial, 0.0)


def test_same_seed_samples_the_same_architectures() -> None:
    first = [t.params for t in sample_many(shipped_space(), 10, seed=3)]
    again = [t.params for t in sample_many(shipped_space(), 10, seed=3)]
    assert first == again


def test_log_and_step_ranges_reach_optuna() -> None:
    space = shipped_space()
    trial = optuna.create_study().ask()
    space.sample(trial)
    dist = trial.distributions
    assert dist["optim.lr"].log is True
    assert dist["depth"].low == 1 and dist["depth"].high == 3


@pytest.mark.parametrize(("override", "message"), [
    ("search_space.depth.low=5", "depth: low (5) > high (3)"),
    ("search_space.block.kernel_size.choices=[]", "block.kernel_size: choices must be a non-empty list"),
    ("search_space.block.downsample.choices=[maxpool,maxpol]", "block.downsample: 'maxpol' is not one of"),
    ("+search_space.block.kernel=3", "unknown key block.kernel"),
    ("search_space.optim.lr.type=integer", "optim.lr: type must be one of"),
    ("+search_space.optim.lr.scale=log", "optim.lr: unknown key(s) scale"),
    ("search_space.optim.lr.low=0.0", "optim.lr: log scale needs low > 0"),
    ("search_space.head.dropout.high=abc", "head.dropout: high must be a number"),
    ("search_space.widths.mode=cone", "widths.mode must be independent or pyramid"),
    ("search_space.block.kernel_size=0", "block.kernel_size: 0 is not valid"),
    ("search_space.head.dropout.high=1.5", "head.dropout: 1.5 is not valid"),
])
def test_bad_spaces_name_the_file_and_the_key(override: str, message: str) -> None:
    with pytest.raises(SearchSpaceError) as err:
        shipped_space("default", override)
    text = str(err.value)
    assert text.startswith("conf/search_space/default.yaml: ")
    assert message in text
    assert "\n" not in text


def test_grid_needs_finite_values_at_every_depth() -> None:
    with pytest.raises(SearchSpaceError, match="head.dropout is a continuous range"):
        shipped_space().check_finite()
    with pytest.raises(SearchSpaceError, match="optim.lr is a continuous range"):
        shipped_space("default", "search_space.head.dropout=0.1").check_finite()
    shipped_space("default", "search_space.head.dropout=0.1", "search_space.optim.lr=0.01",
                  "search_space.optim.weight_decay=0.0").check_finite()  # depth 1..3 stays a range: the grid walks it
