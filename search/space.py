"""The YAML search space: parsed and validated once, then sampled define-by-run per trial.

A parameter is a fixed value or a `{type: int|float|categorical, ...}` mapping. Per-block
parameters are sampled as `block{i}.<name>` for i = 1..depth, so block 3's parameters exist
only in trials with depth >= 3, and the names stay stable across trials for the sampler,
MLflow and the plots. A choice that cannot change the net in this trial is not asked at all:
`head.fc_width` without hidden layers, `optim.momentum` without sgd, `stem.kernel_size`
without a stem, `block{i}.bottleneck` and `block{i}.separable` on a 1x1 conv.

`optim.lr` may be given per optimizer (`lr: {adamw: {...}, sgd: {...}}`); it is then sampled
as `optim.<optimizer>.lr`, so each name keeps one range for the sampler.

`SearchSpace.params_for` is the inverse of `sample`: the trial params that make the space
sample a given architecture, used to enqueue known-good baselines as a sweep's first trials.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

from convsweep.lightning_modules.arch import (ACTIVATIONS, DOWNSAMPLE, OPTIMIZERS, PADDING_MODES, POOLINGS, ArchSpec,
                                               BlockSpec, HeadSpec, OptimSpec, SpecError, StemSpec)
from convsweep.errors import ConvsweepError


class SearchSpaceError(ConvsweepError):
    """The search-space YAML is malformed; the message names the file and the key."""


class SpaceMismatchError(SearchSpaceError):
    """A given architecture is outside the space; the message names the first key that does not fit."""


_PARAM_KEYS = {"int": {"type", "low", "high", "step", "log"}, "float": {"type", "low", "high", "step", "log"},
               "categorical": {"type", "choices"}, "fixed": {"type", "value"}}
_ALLOWED = {"downsample": DOWNSAMPLE, "padding_mode": PADDING_MODES, "activation": ACTIVATIONS,
            "pooling": POOLINGS, "optimizer": OPTIMIZERS}


@dataclass(frozen=True)
class Param:
    """One searchable (or fixed) hyperparameter."""

    kind: str  # int | float | categorical | fixed
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    value: Any = None

    def suggest(self, trial: Any, name: str) -> Any:
        """Ask the trial for a value under `name` (fixed values are not sampled)."""
        if self.kind == "fixed":
            return self.value
        if self.kind == "categorical":
            return trial.suggest_categorical(name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), step=self.step, log=self.log)

    def grid_values(self) -> list[Any] | None:
        """Every value the parameter can take, or None if the range is continuous."""
        if self.kind == "fixed":
            return [self.value]
        if self.kind == "categorical":
            return list(self.choices)
        if self.kind == "int":
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is None:
            return None
        n = int(math.floor((self.high - self.low) / self.step + 1e-9))
        return [round(self.low + i * self.step, 12) for i in range(n + 1)]

    @property
    def candidates(self) -> list[Any]:
        """Values to check against an allowed set (categorical choices or the fixed value)."""
        return list(self.choices) if self.kind == "categorical" else [self.value] if self.kind == "fixed" else []

    def misfit(self, value: Any) -> str | None:
        """Why `value` is not one this parameter can take (None if it is), as the end of a one-line message."""
        if self.kind == "fixed":
            return None if _same(value, self.value) else f"the space fixes it at {self.value!r}"
        if self.kind == "categorical":
            if any(_same(value, c) for c in self.choices):
                return None
            return f"the space's choices are {', '.join(map(repr, self.choices))}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "the space's range takes numbers"
        low, high = float(self.low), float(self.high)
        tol = 1e-9 * max(1.0, abs(high))
        if not low - tol <= float(value) <= high + tol:
            return f"the space's range is [{self.low}, {self.high}]"
        if self.kind == "int" and float(value) != int(value):
            return "the space's range takes integers"
        step = self.step if not self.log else None
        if step and abs((float(value) - low) / step - round((float(value) - low) / step)) > 1e-6:
            return f"the space's range has step {step} from {self.low}"
        return None


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same kind: True is not 1 here, but 16 and 16.0 are the same width."""
    return a == b and isinstance(a, bool) == isinstance(b, bool) and isinstance(a, str) == isinstance(b, str)


def parse_param(raw: Any, where: str) -> Param:
    """Parse one parameter; `where` is `file: key` for the error message."""
    if not isinstance(raw, Mapping):
        if isinstance(raw, (list, tuple)):
            raise SearchSpaceError(f"{where}: a list is not a parameter; write {{type: categorical, choices: [...]}}")
        return Param("fixed", value=raw)
    kind = raw.get("type")
    if kind not in _PARAM_KEYS:
        raise SearchSpaceError(f"{where}: type must be one of int, float, categorical, fixed (got {kind!r})")
    unknown = set(raw) - _PARAM_KEYS[kind]
    if unknown:
        raise SearchSpaceError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} for type {kind}; "
                               f"allowed: {', '.join(sorted(_PARAM_KEYS[kind]))}")
    if kind == "fixed":
        return Param("fixed", value=raw.get("value"))
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, (list, tuple)) or len(choices) == 0:
            raise SearchSpaceError(f"{where}: choices must be a non-empty list")
        return Param("categorical", choices=tuple(choices))
    for key in ("low", "high"):
        value = raw.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SearchSpaceError(f"{where}: {key} must be a number (got {value!r})")
        if kind == "int" and float(value) != int(value):
            raise SearchSpaceError(f"{where}: {key} must be an integer for type int (got {value!r})")
    low, high, step, log = raw["low"], raw["high"], raw.get("step"), bool(raw.get("log", False))
    if low > high:
        raise SearchSpaceError(f"{where}: low ({low}) > high ({high})")
    if step is not None and (isinstance(step, bool) or not isinstance(step, (int, float)) or step <= 0):
        raise SearchSpaceError(f"{where}: step must be a positive number (got {step!r})")
    if log and step not in (None, 1):
        raise SearchSpaceError(f"{where}: log and step cannot be combined")
    if log and low <= 0:
        raise SearchSpaceError(f"{where}: log scale needs low > 0 (got {low})")
    return Param(kind, low=low, high=high, step=None if log and kind == "float" else step, log=log)


_BLOCK_KEYS = {f.name for f in fields(BlockSpec)} - {"filters"}
_HEAD_KEYS = {f.name for f in fields(HeadSpec)}
_OPTIM_KEYS = {f.name for f in fields(OptimSpec)}
_STEM_KEYS = {f.name for f in fields(StemSpec)}
_WIDTH_KEYS = {"mode", "filters", "base_filters", "growth"}
_TOP_KEYS = {"depth", "widths", "block", "head", "optim", "stem"}
_NEEDS_KXK = ("bottleneck", "separable")  # block choices asked only when kernel_size > 1


class _Recorder:
    """Answers a `sample` call from target values instead of a sampler, and notes every name it was asked.

    This makes `params_for` the exact inverse of `sample`: the same code decides which names exist.
    """

    def __init__(self, space: "SearchSpace", targets: dict[str, Any], label: str) -> None:
        self.space, self.targets, self.label = space, targets, label
        self.params: dict[str, Any] = {}

    def ask(self, name: str, param: Param) -> Any:
        value = self.targets.get(name)
        reason = param.misfit(value)
        if reason is not None:
            raise SpaceMismatchError(f"{self.label} does not fit {self.space.source}: {name}={value!r}, but {reason}")
        if param.kind != "fixed":
            self.params[name] = value
        return value


@dataclass(frozen=True)
class SearchSpace:
    """A validated space; `sample(trial)` returns one (ArchSpec, OptimSpec)."""

    depth: Param
    width_mode: str  # independent | pyramid
    widths: dict[str, Param]
    block: dict[str, Param]
    head: dict[str, Param]
    optim: dict[str, Param]
    source: str = "search_space"
    stem: dict[str, Param] = field(default_factory=lambda: _defaults(StemSpec))
    lr_by_optimizer: dict[str, Param] = field(default_factory=dict)  # empty: one `optim.lr` for every optimizer

    def sample(self, trial: Any) -> tuple[ArchSpec, OptimSpec]:
        """Define-by-run sampling: per-block names exist only up to the sampled depth."""
        return self._walk(lambda name, param: param.suggest(trial, name))

    def _walk(self, ask: Any) -> tuple[ArchSpec, OptimSpec]:
        """The one definition of which names a trial has; `ask(name, param)` gives each value."""
        depth = int(ask("depth", self.depth))
        if self.width_mode == "pyramid":
            base = ask("widths.base_filters", self.widths["base_filters"])
            growth = ask("widths.growth", self.widths["growth"])
            filters = [max(1, int(round(base * growth ** i))) for i in range(depth)]
        else:
            filters = [int(ask(f"block{i}.filters", self.widths["filters"])) for i in range(1, depth + 1)]
        blocks = []
        for i in range(1, depth + 1):
            chosen: dict[str, Any] = {}
            for key, param in self.block.items():
                if key in _NEEDS_KXK and chosen["kernel_size"] == 1:
                    continue  # a 1x1 conv has nothing to reduce before it or to split depthwise
                chosen[key] = ask(f"block{i}.{key}", param)
            blocks.append(BlockSpec(filters=filters[i - 1], **chosen))
        stem: dict[str, Any] = {"filters": int(ask("stem.filters", self.stem["filters"]))}
        if stem["filters"]:
            stem["kernel_size"] = ask("stem.kernel_size", self.stem["kernel_size"])
        head: dict[str, Any] = {"fc_layers": int(ask("head.fc_layers", self.head["fc_layers"]))}
        for key, param in self.head.items():
            if key == "fc_layers" or (key == "fc_width" and head["fc_layers"] == 0):
                continue  # the width of zero hidden layers is not a parameter
            head[key] = ask(f"head.{key}", param)
        optim: dict[str, Any] = {"optimizer": ask("optim.optimizer", self.optim["optimizer"])}
        for key, param in self.optim.items():
            if key == "optimizer" or (key == "momentum" and optim["optimizer"] != "sgd"):
                continue  # momentum only means something for sgd
            if key == "lr" and self.lr_by_optimizer:
                optim[key] = ask(f"optim.{optim['optimizer']}.lr", self.lr_by_optimizer[optim["optimizer"]])
            else:
                optim[key] = ask(f"optim.{key}", param)
        return ArchSpec(blocks=tuple(blocks), head=HeadSpec(**head), stem=StemSpec(**stem)), OptimSpec(**optim)

    def params_for(self, arch: ArchSpec, optim: OptimSpec, label: str = "the architecture") -> dict[str, Any]:
        """The trial params (for `study.enqueue_trial`) under which this space samples `arch` and `optim`.

        Args:
            arch, optim: the configuration to express.
            label: how the error message names it (e.g. `search.enqueue: resnet_small`).

        Raises:
            SpaceMismatchError: one line naming the first key whose value the space cannot take.
        """
        targets = {**arch.flat_params(), **optim.flat_params()}
        targets.update({f"optim.{optim.optimizer}.lr": optim.lr} if self.lr_by_optimizer else {})
        if self.width_mode == "pyramid":
            widths = [b.filters for b in arch.blocks]
            targets["widths.base_filters"] = widths[0]
            targets["widths.growth"] = widths[1] / widths[0] if len(widths) > 1 else self._any_growth()
        recorder = _Recorder(self, targets, label)
        got_arch, got_optim = self._walk(recorder.ask)
        wanted = {**_canonical(arch).flat_params(), **_canonical_optim(optim).flat_params()}
        got = {**_canonical(got_arch).flat_params(), **_canonical_optim(got_optim).flat_params()}
        for name, value in wanted.items():
            if not _same(value, got[name]):
                raise SpaceMismatchError(f"{label} does not fit {self.source}: {name}={value!r}, but the space "
                                         f"gives {got[name]!r} there")
        return recorder.params

    def _any_growth(self) -> Any:
        """A one-block pyramid ignores its growth, but the trial still has the name: any valid value."""
        param = self.widths["growth"]
        return param.candidates[0] if param.candidates else param.low

    def check_finite(self) -> None:
        """sampler=grid (Optuna's BruteForceSampler) walks every value of every parameter a trial can ask,
        conditional ones included, so every range needs a step or choices. Names are the YAML keys."""
        used = ("base_filters", "growth") if self.width_mode == "pyramid" else ("filters",)
        named: dict[str, Param] = {"depth": self.depth, **{f"widths.{k}": self.widths[k] for k in used}}
        for section, params in (("block", self.block), ("stem", self.stem), ("head", self.head),
                                ("optim", self.optim), ("optim.lr", self.lr_by_optimizer)):
            named.update({f"{section}.{k}": p for k, p in params.items()})
        for name, param in named.items():
            if param.grid_values() is None:
                raise SearchSpaceError(f"{self.source}: {name} is a continuous range; give it a step or choices for sampler=grid")


def _canonical(arch: ArchSpec) -> ArchSpec:
    """`arch` with the values that cannot matter set to their defaults (fc_width of no hidden layer, a missing
    stem's kernel), so two specs that build the same net compare equal."""
    head = arch.head if arch.head.fc_layers else replace(arch.head, fc_width=HeadSpec.fc_width)
    stem = arch.stem if arch.stem.filters else StemSpec()
    return replace(arch, head=head, stem=stem)


def _canonical_optim(optim: OptimSpec) -> OptimSpec:
    """`optim` with momentum at its default unless the optimizer is sgd, the only one that reads it."""
    return optim if optim.optimizer == "sgd" else replace(optim, momentum=OptimSpec.momentum)


def _section(raw: Mapping[str, Any], key: str, known: set[str], source: str) -> dict[str, Param]:
    section = raw.get(key) or {}
    if not isinstance(section, Mapping):
        raise SearchSpaceError(f"{source}: {key} must be a mapping of parameters")
    unknown = set(section) - known
    if unknown:
        raise SearchSpaceError(f"{source}: unknown key {key}.{sorted(unknown)[0]}; known: {', '.join(sorted(known))}")
    params = {k: parse_param(v, f"{source}: {key}.{k}") for k, v in section.items()}
    for name, param in params.items():
        bad = [c for c in param.candidates if name in _ALLOWED and c not in _ALLOWED[name]]
        if bad:
            raise SearchSpaceError(f"{source}: {key}.{name}: {bad[0]!r} is not one of {', '.join(map(str, _ALLOWED[name]))}")
    return params


def _defaults(cls: type, skip: set[str] = frozenset()) -> dict[str, Param]:
    return {f.name: Param("fixed", value=f.default) for f in fields(cls) if f.name not in skip}


def parse_space(raw: Mapping[str, Any], source: str = "search_space") -> SearchSpace:
    """Validate a search-space mapping; raise SearchSpaceError naming `source` and the key.

    Keys left out are fixed at the spec's default (e.g. no `head.dropout` means dropout 0).
    """
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise SearchSpaceError(f"{source}: unknown key {sorted(unknown)[0]}; known: {', '.join(sorted(_TOP_KEYS))}")
    if "depth" not in raw:
        raise SearchSpaceError(f"{source}: depth is required (the number of conv blocks)")
    depth = parse_param(raw["depth"], f"{source}: depth")
    depths = depth.grid_values() or []
    if not depths or min(depths) < 1 or any(float(d) != int(d) for d in depths):
        raise SearchSpaceError(f"{source}: depth must be integers >= 1")
    widths_raw = dict(raw.get("widths") or {})
    mode = widths_raw.pop("mode", "independent")
    if mode not in ("independent", "pyramid"):
        raise SearchSpaceError(f"{source}: widths.mode must be independent or pyramid (got {mode!r})")
    widths = _section({"widths": widths_raw}, "widths", _WIDTH_KEYS - {"mode"}, source)
    needed = ("base_filters", "growth") if mode == "pyramid" else ("filters",)
    for key in needed:
        if key not in widths:
            raise SearchSpaceError(f"{source}: widths.{key} is required when widths.mode={mode}")
    for key in needed:
        bad = [c for c in widths[key].candidates if not isinstance(c, (int, float)) or isinstance(c, bool) or c <= 0]
        if bad or (widths[key].low is not None and widths[key].low <= 0):
            raise SearchSpaceError(f"{source}: widths.{key} must be positive numbers")
    block = {**_defaults(BlockSpec, {"filters"}), **_section(raw, "block", _BLOCK_KEYS, source)}
    head = {**_defaults(HeadSpec), **_section(raw, "head", _HEAD_KEYS, source)}
    optim_raw = dict(raw.get("optim") or {})
    lr_by_optimizer = _lr_by_optimizer(optim_raw.get("lr"), source)
    if lr_by_optimizer:
        optim_raw.pop("lr")
    optim = {**_defaults(OptimSpec), **_section({"optim": optim_raw}, "optim", _OPTIM_KEYS, source)}
    stem = {**_defaults(StemSpec), **_section(raw, "stem", _STEM_KEYS, source)}
    for section, params, build in (("block", block, lambda **kw: BlockSpec(filters=1, **kw)),
                                   ("head", head, HeadSpec), ("optim", optim, OptimSpec), ("stem", stem, StemSpec),
                                   ("optim.lr", lr_by_optimizer, lambda **kw: OptimSpec(lr=next(iter(kw.values()))))):
        _check_values(section, params, build, source)
    missing = [o for o in optim["optimizer"].candidates if lr_by_optimizer and o not in lr_by_optimizer]
    if missing:
        raise SearchSpaceError(f"{source}: optim.lr has no range for optimizer {missing[0]}; "
                               f"give one per optimizer choice ({', '.join(map(str, optim['optimizer'].candidates))})")
    return SearchSpace(depth, mode, widths, block, head, optim, source, stem, lr_by_optimizer)


def _lr_by_optimizer(raw: Any, source: str) -> dict[str, Param]:
    """`optim.lr` given per optimizer (a mapping keyed by optimizer names), parsed; {} for one shared lr."""
    if not isinstance(raw, Mapping) or "type" in raw or not raw:
        return {}
    unknown = sorted(set(raw) - set(OPTIMIZERS))
    if unknown:
        raise SearchSpaceError(f"{source}: optim.lr.{unknown[0]}: optim.lr is a parameter with a type, or one per "
                               f"optimizer keyed by {', '.join(OPTIMIZERS)}")
    return {name: parse_param(value, f"{source}: optim.lr.{name}") for name, value in raw.items()}


def _check_values(section: str, params: dict[str, Param], build: Any, source: str) -> None:
    """Every value a parameter can take must build a valid spec, so a bad value fails now, not in each trial."""
    for name, param in params.items():
        values = param.candidates + [v for v in (param.low, param.high) if v is not None]
        for value in values:
            try:
                build(**{name: value})
            except (SpecError, TypeError, ValueError) as exc:
                raise SearchSpaceError(f"{source}: {section}.{name}: {value!r} is not valid ({exc})") from None
