"""Plain architecture and optimisation specs.

One object, four uses: the search space samples an `ArchSpec`, `build_convnet` turns it
into a module, MLflow flattens it into params, and `reproduce` rebuilds it from the logged
config. Specs are frozen dataclasses so they can be hashed, compared and logged as-is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from convsweep.errors import ConvsweepError

DOWNSAMPLE = ("maxpool", "avgpool", "stride", "none")
PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
ACTIVATIONS = ("relu", "gelu", "elu", "silu", "leaky_relu", "tanh")
POOLINGS = ("gap", "flatten")
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "onecycle", "constant")  # the lr after warm-up: cosine to 0, linear to 0, or flat
MAX_CONVS = 3  # convs per block


class SpecError(ConvsweepError, ValueError):
    """A spec field holds a value the builder cannot use."""


def _check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise SpecError(f"{name}={value!r} is not one of {', '.join(map(str, allowed))}")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise SpecError(f"{name} must be true or false, got {value!r}")


@dataclass(frozen=True)
class BlockSpec:
    """One conv block; every conv below is followed by [BN] -> act.

    `convs` times: [1x1 reduction (bottleneck)] -> k x k conv (or depthwise k x k + 1x1 if separable),
    then [1x1 conv (pointwise)], then [+ shortcut, before the last act (residual)], then downsample.
    The defaults are one plain k x k conv: the block every earlier sweep searched.
    """

    filters: int
    kernel_size: int = 3
    downsample: str = "maxpool"  # maxpool | avgpool | stride (the first conv has stride 2) | none
    padding_mode: str = "zeros"
    pointwise: bool = False  # extra 1x1 conv after the block's convs
    batch_norm: bool = True
    activation: str = "relu"
    convs: int = 1  # k x k convs stacked in the block (VGG: 2-3 small convs instead of one large)
    residual: bool = False  # add the block's input back: identity, or a 1x1 projection when C or H x W change (ResNet)
    bottleneck: int = 0  # 0 = none; r >= 1: a 1x1 conv to max(1, filters // r) channels before each k x k conv
    separable: bool = False  # each k x k conv is depthwise k x k, then 1x1 to `filters` (MobileNet)

    def __post_init__(self) -> None:
        if int(self.filters) < 1 or int(self.kernel_size) < 1:
            raise SpecError(f"filters and kernel_size must be >= 1, got {self.filters}, {self.kernel_size}")
        if not 1 <= int(self.convs) <= MAX_CONVS:
            raise SpecError(f"convs must be 1..{MAX_CONVS}, got {self.convs}")
        if int(self.bottleneck) < 0:
            raise SpecError(f"bottleneck must be 0 (none) or a reduction factor >= 1, got {self.bottleneck}")
        _check_choice("downsample", self.downsample, DOWNSAMPLE)
        _check_choice("padding_mode", self.padding_mode, PADDING_MODES)
        _check_choice("activation", self.activation, ACTIVATIONS)
        _check_bool("pointwise", self.pointwise)
        _check_bool("batch_norm", self.batch_norm)
        _check_bool("residual", self.residual)
        _check_bool("separable", self.separable)


@dataclass(frozen=True)
class HeadSpec:
    """Classifier head: pooling, then `fc_layers` hidden layers of `fc_width`, then the output layer."""

    pooling: str = "gap"  # gap (global average pooling) | flatten
    fc_layers: int = 0
    fc_width: int = 128
    dropout: float = 0.0  # before every linear layer

    def __post_init__(self) -> None:
        _check_choice("pooling", self.pooling, POOLINGS)
        if not 0.0 <= float(self.dropout) < 1.0:
            raise SpecError(f"dropout must be in [0, 1), got {self.dropout}")
        if int(self.fc_layers) < 0:
            raise SpecError(f"fc_layers must be >= 0, got {self.fc_layers}")


@dataclass(frozen=True)
class StemSpec:
    """An optional conv before the first block: conv(k x k, stride 1) -> BN -> ReLU, as in ResNet."""

    filters: int = 0  # 0 = no stem
    kernel_size: int = 3

    def __post_init__(self) -> None:
        if int(self.filters) < 0 or int(self.kernel_size) < 1:
            raise SpecError(f"stem filters must be >= 0 and kernel_size >= 1, got {self.filters}, {self.kernel_size}")


@dataclass(frozen=True)
class ArchSpec:
    """A whole conv net, independent of the dataset (input shape and classes come at build time)."""

    blocks: tuple[BlockSpec, ...]
    head: HeadSpec = HeadSpec()
    stem: StemSpec = StemSpec()

    def __post_init__(self) -> None:
        if not self.blocks:
            raise SpecError("an architecture needs at least one conv block")

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def to_dict(self) -> dict[str, Any]:
        """The config form (`arch:` in a resolved config): blocks as a list of dicts."""
        return {"blocks": [asdict(b) for b in self.blocks], "head": asdict(self.head), "stem": asdict(self.stem)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ArchSpec":
        """Rebuild from the config form; unknown keys are rejected, not ignored; missing keys take defaults."""
        _reject_unknown("arch", data, {"blocks", "head", "stem"})
        blocks = []
        for i, block in enumerate(data["blocks"], start=1):
            _reject_unknown(f"arch.blocks[{i}]", block, {f.name for f in fields(BlockSpec)})
            blocks.append(BlockSpec(**dict(block)))
        head = dict(data.get("head") or {})
        _reject_unknown("arch.head", head, {f.name for f in fields(HeadSpec)})
        stem = dict(data.get("stem") or {})
        _reject_unknown("arch.stem", stem, {f.name for f in fields(StemSpec)})
        return cls(blocks=tuple(blocks), head=HeadSpec(**head), stem=StemSpec(**stem))

    def flat_params(self) -> dict[str, Any]:
        """MLflow-style flat params with the sampler's names (`block2.kernel_size`, `head.dropout`, `stem.filters`)."""
        flat: dict[str, Any] = {"depth": self.depth}
        for i, block in enumerate(self.blocks, start=1):
            flat.update({f"block{i}.{k}": v for k, v in asdict(block).items()})
        flat.update({f"head.{k}": v for k, v in asdict(self.head).items()})
        flat.update({f"stem.{k}": v for k, v in asdict(self.stem).items()})
        return flat


@dataclass(frozen=True)
class OptimSpec:
    """Optimisation hyperparameters of one trial."""

    optimizer: str = "adamw"
    lr: float = 3e-3
    weight_decay: float = 1e-4
    batch_size: int = 128
    momentum: float = 0.9  # sgd only
    schedule: str = "cosine"  # per optimizer step, after warm-up: cosine | onecycle | constant
    warmup: float = 0.1  # fraction of the trial's optimizer steps spent ramping the lr up linearly
    label_smoothing: float = 0.0  # cross-entropy target smoothing, in [0, 1)
    augment_strength: float = 1.0  # scales the dataset's augmentation: 0 off, 1 as configured

    def __post_init__(self) -> None:
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        if float(self.lr) <= 0 or int(self.batch_size) < 1:
            raise SpecError(f"lr must be > 0 and batch_size >= 1, got {self.lr}, {self.batch_size}")
        _check_choice("schedule", self.schedule, SCHEDULES)
        for name in ("warmup", "label_smoothing"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                raise SpecError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if float(self.augment_strength) < 0:
            raise SpecError(f"augment_strength must be >= 0, got {self.augment_strength}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "OptimSpec":
        _reject_unknown("optim", data, {f.name for f in fields(cls)})
        return cls(**dict(data))

    def flat_params(self) -> dict[str, Any]:
        return {f"optim.{k}": v for k, v in asdict(self).items()}


def _reject_unknown(where: str, data: Mapping[str, Any], known: set[str]) -> None:
    unknown = set(data) - known
    if unknown:
        raise SpecError(f"unknown key(s) {', '.join(sorted(unknown))} in {where}; known: {', '.join(sorted(known))}")
