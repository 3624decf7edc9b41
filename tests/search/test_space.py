"""Search-space parsing, validation and define-by-run sampling, on the shipped YAML."""

from __future__ import annotations

import re
from typing import Any, Mapping

import optuna
import pytest
from omegaconf import OmegaConf

from convsweep.lightning_modules.arch import OptimSpec
from convsweep.search.compose import compose_config
from convsweep.search.space import SearchSpaceError, parse_space


def shipped_yaml(name: str = "default", *overrides: str) -> dict[str, Any]:
    return OmegaConf.to_container(compose_config([f"search_space={name}", *overrides]).search_space)


def shipped_space(name: str = "default", *overrides: str):
    return parse_space(shipped_yaml(name, *overrides), f"conf/search_space/{name}.yaml")


def declared(raw: Mapping[str, Any], name: str) -> Any:
    """The YAML entry a trial param comes from: `block2.filters` from `widths.filters`, `block2.x` from `block.x`,
    `optim.sgd.lr` from `optim.lr.sgd`, anything else from its own dotted path."""
    parts = name.split(".")
    if re.fullmatch(r"block\d+", parts[0]):
        return raw["widths" if parts[1] == "filters" else "block"][parts[1]]
    if parts[0] == "optim" and len(parts) == 3:
        return raw["optim"]["lr"][parts[1]]
    for part in parts:
        raw = raw[part]
    return raw


def sample_many(space, n: int = 40, seed: int = 0) -> list[optuna.trial.FrozenTrial]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    study.optimize(lambda t: float(space.sample(t)[0].depth), n_trials=n)
    return study.trials


@pytest.mark.parametrize("name", ["default", "pyramid", "wide"])
def test_shipped_spaces_sample_every_depth_inside_the_declared_ranges(name: str) -> None:
    raw = shipped_yaml(name)
    space = parse_space(raw, name)
    trials = sample_many(space)
    assert {t.params["depth"] for t in trials} == set(range(raw["depth"]["low"], raw["depth"]["high"] + 1))
    for t in trials:
        depth = t.params["depth"]
        blocks = {int(m.group(1)) for k in t.params if (m := re.match(r"block(\d+)\.", k))}
        assert blocks == set(range(1, depth + 1)), sorted(t.params)  # every block up to depth, none beyond
        for key, value in t.params.items():
            entry = declared(raw, key)
            if entry["type"] == "categorical":
                assert value in entry["choices"], (key, value)
            else:
                assert entry["low"] <= value <= entry["high"], (key, value)
        arch, optim = space.sample(optuna.trial.FixedTrial(t.params))  # the spec is built from these values
        assert arch.depth == depth
        assert [b.kernel_size for b in arch.blocks] == [t.params[f"block{i}.kernel_size"] for i in range(1, depth + 1)]
        if raw["widths"]["mode"] == "independent":
            assert [b.filters for b in arch.blocks] == [t.params[f"block{i}.filters"] for i in range(1, depth + 1)]
        assert optim.lr == t.params.get("optim.lr", t.params.get(f"optim.{optim.optimizer}.lr"))


def test_momentum_is_sampled_only_for_sgd_and_fc_width_only_with_hidden_layers() -> None:
    """On `wide`, which searches the optimizer, momentum, and the number of hidden layers."""
    space = shipped_space("wide")
    trials = sample_many(space)
    assert {t.params["optim.optimizer"] == "sgd" for t in trials} == {True, False}
    assert {t.params["head.fc_layers"] > 0 for t in trials} == {True, False}
    for t in trials:
        sgd = t.params["optim.optimizer"] == "sgd"
        assert ("optim.momentum" in t.params) == sgd
        assert ("head.fc_width" in t.params) == (t.params["head.fc_layers"] > 0)
        _, optim = space.sample(optuna.trial.FixedTrial(t.params))
        assert optim.momentum == (t.params["optim.momentum"] if sgd else OptimSpec.momentum)


def test_the_training_recipe_is_searched_where_a_space_declares_it() -> None:
    """`wide` searches the schedule, warm-up, label smoothing and augmentation strength; `default` leaves them
    at the spec's defaults, so its trials carry none of them."""
    recipe = ("schedule", "warmup", "label_smoothing", "augment_strength")
    trials = sample_many(shipped_space("wide"))
    assert {t.params["optim.schedule"] for t in trials} == {"cosine", "onecycle"}
    for t in trials:
        _, optim = shipped_space("wide").sample(optuna.trial.FixedTrial(t.params))
        assert [getattr(optim, k) for k in recipe] == [t.params[f"optim.{k}"] for k in recipe]
    assert not any(f"optim.{k}" in t.params for t in sample_many(shipped_space(), 5) for k in recipe)


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
    assert dist["depth"].low == 2 and dist["depth"].high == 3


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


# --- block vocabulary, stem, per-optimizer lr, and the inverse mapping (params_for) -------------


def test_default_trials_name_convs_and_residual_per_block() -> None:
    for t in sample_many(shipped_space()):
        for i in range(1, t.params["depth"] + 1):
            assert t.params[f"block{i}.convs"] in (1, 2) and t.params[f"block{i}.residual"] in (False, True)
        assert "block1.bottleneck" not in t.params and "block1.separable" not in t.params  # fixed: none, plain
        assert ("stem.kernel_size" in t.params) is False  # fixed at 3 when there is a stem


def test_conditional_choices_are_asked_only_where_they_change_the_net() -> None:
    space = shipped_space("wide")
    for t in sample_many(space, 60):
        assert ("stem.kernel_size" in t.params) == (t.params["stem.filters"] > 0)
        for i in range(1, t.params["depth"] + 1):
            kxk = t.params[f"block{i}.kernel_size"] > 1
            assert (f"block{i}.bottleneck" in t.params) == kxk and (f"block{i}.separable" in t.params) == kxk
        optimizer = t.params["optim.optimizer"]
        assert [k for k in t.params if k.endswith(".lr")] == [f"optim.{optimizer}.lr"]
        assert (t.params[f"optim.{optimizer}.lr"] >= 1e-2) == (optimizer == "sgd")


def test_a_space_file_without_the_new_keys_samples_todays_network() -> None:
    old = {"depth": 2, "widths": {"filters": 8}, "block": {"kernel_size": {"type": "categorical", "choices": [3, 5]}},
           "optim": {"lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}}
    trial = optuna.create_study().ask()
    arch, _ = parse_space(old, "old.yaml").sample(trial)
    assert sorted(trial.params) == ["block1.kernel_size", "block2.kernel_size", "optim.lr"]
    assert arch.stem.filters == 0
    assert all((b.convs, b.residual, b.bottleneck, b.separable) == (1, False, 0, False) for b in arch.blocks)


@pytest.mark.parametrize("name", ["default", "pyramid", "wide"])
def test_params_for_inverts_sample(name: str) -> None:
    space = shipped_space(name)
    for t in sample_many(space, 30, seed=5):
        arch, optim = space.sample(optuna.trial.FixedTrial(t.params))
        assert space.params_for(arch, optim) == t.params


@pytest.mark.parametrize(("lr", "message"), [
    ({"adamw": {"type": "float", "low": 1e-3, "high": 1e-2}}, "optim.lr has no range for optimizer sgd"),
    ({"adamw": 0.01, "sgdd": 0.1}, "optim.lr.sgdd: optim.lr is a parameter with a type, or one per optimizer"),
    ({"adamw": 0.01, "sgd": -1.0}, "optim.lr.sgd: -1.0 is not valid"),
])
def test_per_optimizer_lr_is_validated(lr: dict, message: str) -> None:
    raw = {"depth": 1, "widths": {"filters": 8},
           "optim": {"optimizer": {"type": "categorical", "choices": ["adamw", "sgd"]}, "lr": lr}}
    with pytest.raises(SearchSpaceError, match=re.escape(message)):
        parse_space(raw, "space.yaml")
