"""Known-good architectures as a sweep's first trials: `search.enqueue=[small,resnet_small]`.

Each name is a file in `conf/arch/`. `check_baselines` runs in the pre-flight check, so a name
the space cannot express (or that would be pruned before training) stops the sweep before any
store is written, with one line naming the key that does not fit. `enqueue_baselines` then puts
them in the study through Optuna's `enqueue_trial`, so TPE learns from them like any other trial.
Each baseline runs once per study: a resumed sweep does not enqueue it again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from convsweep.errors import ConvsweepError
from convsweep.lightning_modules.arch import ArchSpec, OptimSpec
from convsweep.search.compose import available, conf_dir
from convsweep.search.space import SearchSpace

BASELINE_ATTR = "baseline"  # user attr of an enqueued trial: the conf/arch name it runs


class BaselineError(ConvsweepError):
    """A `search.enqueue` entry cannot run as a trial of this sweep."""


@dataclass(frozen=True)
class Baseline:
    """One architecture to enqueue, as the trial params of the sweep's space."""

    name: str  # conf/arch/<name>.yaml
    params: dict[str, Any]


def baseline_params(cfg: DictConfig, space: SearchSpace) -> list[Baseline]:
    """Map every `search.enqueue` name to the trial params under which `space` samples it.

    The optimisation half of each trial is `cfg.optim`, the config `convsweep train` uses.

    Raises:
        BaselineError: an unknown name.
        SpaceMismatchError: an arch (or `cfg.optim`) the space cannot express; names the key.
    """
    optim = OptimSpec.from_dict(OmegaConf.to_container(cfg.optim, resolve=True))
    return [Baseline(str(name), space.params_for(load_arch(str(name)), optim, f"search.enqueue: {name}"))
            for name in cfg.search.get("enqueue") or []]


def check_baselines(cfg: DictConfig, space: SearchSpace, input_shape: tuple[int, int, int],
                    num_classes: int) -> list[Baseline]:
    """Pre-flight: every `search.enqueue` entry fits the space, builds for this dataset and is within budget.

    Args:
        cfg: the composed sweep config.
        space: the parsed search space.
        input_shape, num_classes: of the sweep's dataset, for the shape check and the compute budget.

    Raises:
        ConvsweepError: one line naming the entry and what does not fit (a `SpaceMismatchError` names the key).
    """
    from convsweep.lightning_modules.network import ArchitectureError, plan_convnet

    baselines = baseline_params(cfg, space)
    for baseline in baselines:
        label = f"search.enqueue: {baseline.name}"
        try:
            plan = plan_convnet(load_arch(baseline.name), input_shape, num_classes)
        except ArchitectureError as exc:
            raise BaselineError(f"{label} cannot be built for input {input_shape}: {exc}") from None
        for key, cost in (("max_macs", plan.macs), ("max_params", plan.params)):
            limit = cfg.search.get(key)
            if limit is not None and cost > float(limit):
                raise BaselineError(f"{label} has {cost:,} {key.removeprefix('max_')}, over search.{key}="
                                    f"{float(limit):g}; raise the budget or drop it from search.enqueue")
    return baselines


def load_arch(name: str) -> ArchSpec:
    """conf/arch/<name>.yaml as an `ArchSpec`; an unknown name lists the known ones."""
    path = conf_dir() / "arch" / f"{name}.yaml"
    if not path.is_file():
        raise BaselineError(f"search.enqueue: unknown arch '{name}'; choose from: {', '.join(available('arch'))}")
    return ArchSpec.from_dict(OmegaConf.to_container(OmegaConf.load(path), resolve=True))


def enqueue_baselines(study: Any, space: SearchSpace, cfg: DictConfig) -> list[str]:
    """Enqueue the `search.enqueue` baselines this study has not run or queued yet; return their names.

    Call it once per sweep, in the main process, before the workers start; `check_baselines`
    has already refused anything that does not fit.

    Args:
        study: the opened `optuna.Study`.
        space: the sweep's parsed search space.
        cfg: the composed sweep config.
    """
    seen = {t.user_attrs.get(BASELINE_ATTR) for t in study.get_trials(deepcopy=False)}
    added = []
    for baseline in baseline_params(cfg, space):
        if baseline.name not in seen:
            study.enqueue_trial(baseline.params, user_attrs={BASELINE_ATTR: baseline.name})
            seen.add(baseline.name)
            added.append(baseline.name)
    return added
