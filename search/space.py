"""The YAML search space: parsed and validated once, then sampled define-by-run per trial.

A parameter is a fixed value or a `{type: int|float|categorical, ...}` mapping. Per-block
parameters are sampled as `block{i}.<name>` for i = 1..depth, so block 3's parameters exist
only in trials with depth >= 3, and the names stay stable across trials for the sampler,
MLflow and the plots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, Mapping

from convsweep.lightning_modules.arch import (ACTIVATIONS, DOWNSAMPLE, OPTIMIZERS, PADDING_MODES, POOLINGS, ArchSpec,
                                    BlockSpec, HeadSpec, OptimSpec, SpecError)
from convsweep.errors import ConvsweepError


class SearchSpaceError(ConvsweepError):
    """The search-space YAML is malformed; the message names the file and the key."""


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
_WIDTH_KEYS = {"mode", "filters", "base_filters", "growth"}
_TOP_KEYS = {"depth", "widths", "block", "head", "optim"}


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

    def sample(self, trial: Any) -> tuple[ArchSpec, OptimSpec]:
        """Define-by-run sampling: per-block names exist only up to the sampled depth."""
        depth = int(self.depth.suggest(trial, "depth"))
        if self.width_mode == "pyramid":
            base = self.widths["base_filters"].suggest(trial, "widths.base_filters")
            growth = self.widths["growth"].suggest(trial, "widths.growth")
            filters = [max(1, int(round(base * growth ** i))) for i in range(depth)]
        else:
            filters = [int(self.widths["filters"].suggest(trial, f"block{i}.filters")) for i in range(1, depth + 1)]
        blocks = tuple(
            BlockSpec(filters=filters[i - 1], **{k: p.suggest(trial, f"block{i}.{k}") for k, p in self.block.items()})
            for i in range(1, depth + 1)
        )
        head: dict[str, Any] = {"fc_layers": int(self.head["fc_layers"].suggest(trial, "head.fc_layers"))}
        for key, param in self.head.items():
            if key == "fc_layers" or (key == "fc_width" and head["fc_layers"] == 0):
                continue  # the width of zero hidden layers is not a parameter
            head[key] = param.suggest(trial, f"head.{key}")
        optim: dict[str, Any] = {"optimizer": self.optim["optimizer"].suggest(trial, "optim.optimizer")}
        for key, param in self.optim.items():
            if key == "optimizer" or (key == "momentum" and optim["optimizer"] != "sgd"):
                continue  # momentum only means something for sgd
            optim[key] = param.suggest(trial, f"optim.{key}")
        return ArchSpec(blocks=blocks, head=HeadSpec(**head)), OptimSpec(**optim)

    def grid(self) -> dict[str, list[Any]]:
        """The full grid for GridSampler; only finite spaces with a fixed depth have one."""
        depths = self.depth.grid_values()
        if not depths or len(depths) != 1:
            raise SearchSpaceError(f"{self.source}: sampler=grid needs a fixed depth (e.g. search_space.depth=2), "
                                   "because per-block parameters depend on it")
        depth = int(depths[0])
        named: dict[str, Param] = {}
        if self.width_mode == "pyramid":
            named.update({f"widths.{k}": self.widths[k] for k in ("base_filters", "growth")})
        else:
            named.update({f"block{i}.filters": self.widths["filters"] for i in range(1, depth + 1)})
        named.update({f"block{i}.{k}": p for i in range(1, depth + 1) for k, p in self.block.items()})
        named.update({f"head.{k}": p for k, p in self.head.items()})
        named.update({f"optim.{k}": p for k, p in self.optim.items()})
        grid: dict[str, list[Any]] = {}
        for name, param in named.items():
            if param.kind == "fixed":
                continue
            values = param.grid_values()
            if values is None:
                raise SearchSpaceError(f"{self.source}: {name} is a continuous range; give it a step or choices for sampler=grid")
            grid[name] = values
        return grid


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
    optim = {**_defaults(OptimSpec), **_section(raw, "optim", _OPTIM_KEYS, source)}
    for section, params, build in (("block", block, lambda **kw: BlockSpec(filters=1, **kw)),
                                   ("head", head, HeadSpec), ("optim", optim, OptimSpec)):
        _check_values(section, params, build, source)
    return SearchSpace(depth, mode, widths, block, head, optim, source)


def _check_values(section: str, params: dict[str, Param], build: Any, source: str) -> None:
    """Every value a parameter can take must build a valid spec, so a bad value fails now, not in each trial."""
    for name, param in params.items():
        values = param.candidates + [v for v in (param.low, param.high) if v is not None]
        for value in values:
            try:
                build(**{name: value})
            except (SpecError, TypeError, ValueError) as exc:
                raise SearchSpaceError(f"{source}: {section}.{name}: {value!r} is not valid ({exc})") from None
