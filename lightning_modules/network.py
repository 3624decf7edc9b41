"""Build a conv net from an `ArchSpec`, with shape inference before any weight exists.

`plan_convnet` walks the spec analytically (no forward pass), so an architecture whose
feature map collapses, e.g. four stride-2 blocks on an 8x8 input, is rejected before the
trial spends a second training. The same walk gives the parameter count and MACs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from convsweep.lightning_modules.arch import ArchSpec, BlockSpec, StemSpec
from convsweep.errors import ConvsweepError


class ArchitectureError(ConvsweepError, ValueError):
    """The spec cannot be built for this input shape (e.g. the feature map collapses)."""


@dataclass(frozen=True)
class LayerPlan:
    """One block's input and output shapes, (C, H, W), and its cost."""

    name: str
    in_shape: tuple[int, int, int]
    out_shape: tuple[int, int, int]
    params: int
    macs: int


@dataclass(frozen=True)
class NetworkPlan:
    """The analytic shape walk of a whole net."""

    layers: tuple[LayerPlan, ...]
    feature_shape: tuple[int, int, int]  # (C, H, W) entering the head

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def macs(self) -> int:
        """Multiply-accumulates per image in the forward pass (FLOPs ~= 2 x MACs)."""
        return sum(layer.macs for layer in self.layers)


@dataclass(frozen=True)
class ConvOp:
    """One conv of a block, before its [BN] -> act: the single description both the plan and the builder read."""

    c_in: int
    c_out: int
    kernel: int
    stride: int = 1
    groups: int = 1  # c_in for a depthwise conv

    @property
    def pad(self) -> int:
        return self.kernel // 2


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def block_ops(block: BlockSpec, c_in: int) -> list[ConvOp]:
    """The block's main path, in order: `convs` x ([1x1 reduce] -> k x k | depthwise k x k + 1x1), [1x1 pointwise].

    Only the first k x k conv strides (downsample=stride); 1x1 reductions run before it, at full size.
    """
    stride = 2 if block.downsample == "stride" else 1
    k, f = block.kernel_size, block.filters
    ops: list[ConvOp] = []
    for j in range(block.convs):
        c = c_in if j == 0 else f
        s = stride if j == 0 else 1
        if block.bottleneck:
            width = max(1, f // block.bottleneck)  # (B, width, H, W)
            ops.append(ConvOp(c, width, 1))
            c = width
        if block.separable:
            ops += [ConvOp(c, c, k, s, groups=c), ConvOp(c, f, 1)]
        else:
            ops.append(ConvOp(c, f, k, s))
    if block.pointwise:
        ops.append(ConvOp(f, f, 1))
    return ops


def shortcut_op(block: BlockSpec, c_in: int) -> ConvOp | None:
    """A residual block's 1x1 projection, needed exactly when the channels or the size change; else identity."""
    stride = 2 if block.downsample == "stride" else 1
    if not block.residual or (c_in == block.filters and stride == 1):
        return None
    return ConvOp(c_in, block.filters, 1, stride)


def _conv_cost(op: ConvOp, h_out: int, w_out: int, bn: bool) -> tuple[int, int]:
    weights = op.c_in // op.groups * op.c_out * op.kernel * op.kernel
    params = weights + (2 * op.c_out if bn else op.c_out)  # weight + (BN affine | bias)
    return params, weights * h_out * w_out


def _plan_block(i: int, block: BlockSpec, shape: tuple[int, int, int]) -> LayerPlan:
    c, h, w = shape
    params = macs = 0
    for op in block_ops(block, c):
        if block.padding_mode != "zeros" and op.pad >= min(h, w):
            raise ArchitectureError(
                f"block{i}: {block.padding_mode} padding of {op.pad} needs a feature map larger than {h}x{w}"
            )
        h2, w2 = _conv_out(h, op.kernel, op.stride, op.pad), _conv_out(w, op.kernel, op.stride, op.pad)
        if h2 < 1 or w2 < 1:
            raise ArchitectureError(
                f"block{i}: feature map collapses ({h}x{w} -> {h2}x{w2}) with kernel {op.kernel}, stride {op.stride}")
        p, m = _conv_cost(op, h2, w2, block.batch_norm)
        params, macs, h, w = params + p, macs + m, h2, w2
    projection = shortcut_op(block, shape[0])
    if projection is not None:
        p, m = _conv_cost(projection, h, w, block.batch_norm)
        params, macs = params + p, macs + m
    if block.downsample in ("maxpool", "avgpool"):
        if h < 2 or w < 2:
            raise ArchitectureError(f"block{i}: feature map collapses ({h}x{w} -> {h // 2}x{w // 2}) at the 2x2 {block.downsample}")
        h, w = h // 2, w // 2
    return LayerPlan(f"block{i}", shape, (block.filters, h, w), params, macs)


def _plan_stem(stem: StemSpec, shape: tuple[int, int, int]) -> LayerPlan:
    c, h, w = shape
    op = ConvOp(c, stem.filters, stem.kernel_size)
    h2, w2 = _conv_out(h, op.kernel, 1, op.pad), _conv_out(w, op.kernel, 1, op.pad)
    params, macs = _conv_cost(op, h2, w2, bn=True)
    return LayerPlan("stem", shape, (stem.filters, h2, w2), params, macs)


def plan_convnet(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> NetworkPlan:
    """Walk the spec's shapes and costs; raise `ArchitectureError` if it cannot be built.

    Args:
        spec: the architecture.
        input_shape: (C, H, W) of one image.
        num_classes: width of the output layer.
    """
    shape = tuple(int(s) for s in input_shape)
    layers = []
    if spec.stem.filters:
        layers.append(_plan_stem(spec.stem, shape))  # type: ignore[arg-type]
        shape = layers[-1].out_shape
    for i, block in enumerate(spec.blocks, start=1):
        layer = _plan_block(i, block, shape)  # type: ignore[arg-type]
        layers.append(layer)
        shape = layer.out_shape
    c, h, w = shape
    width = c if spec.head.pooling == "gap" else c * h * w
    feature_shape = (c, h, w)
    params = macs = 0
    for out in [spec.head.fc_width] * spec.head.fc_layers + [num_classes]:
        params += width * out + out
        macs += width * out
        width = out
    layers.append(LayerPlan("head", feature_shape, (num_classes, 1, 1), params, macs))
    return NetworkPlan(tuple(layers), feature_shape)  # type: ignore[arg-type]


_ACTIVATIONS = {
    "relu": lambda: nn.ReLU(inplace=True),
    "gelu": nn.GELU,
    "elu": lambda: nn.ELU(inplace=True),
    "silu": lambda: nn.SiLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.1, inplace=True),
    "tanh": nn.Tanh,
}


def _conv_bn(op: ConvOp, batch_norm: bool, padding_mode: str = "zeros") -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(op.c_in, op.c_out, op.kernel, stride=op.stride, padding=op.pad,
                                         groups=op.groups, padding_mode=padding_mode, bias=not batch_norm)]
    return layers + [nn.BatchNorm2d(op.c_out)] if batch_norm else layers


class ConvBlock(nn.Module):
    """body -> [+ shortcut -> act] -> [pool]; `shortcut` is None for a plain block, Identity or a 1x1 projection."""

    def __init__(self, body: nn.Sequential, shortcut: nn.Module | None, act: nn.Module, pool: nn.Module) -> None:
        super().__init__()
        self.body, self.shortcut, self.act, self.pool = body, shortcut, act, pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut is None:
            return self.pool(self.body(x))
        return self.pool(self.act(self.body(x) + self.shortcut(x)))


def make_conv_block(block: BlockSpec, in_channels: int) -> ConvBlock:
    """The block `block_ops` describes: each conv -> [BN] -> act; a residual block's last act follows the sum."""
    layers: list[nn.Module] = []
    for op in block_ops(block, in_channels):
        layers += _conv_bn(op, block.batch_norm, block.padding_mode if op.kernel > 1 else "zeros")
        layers.append(_ACTIVATIONS[block.activation]())
    shortcut: nn.Module | None = None
    if block.residual:
        layers.pop()  # the last act comes after the sum
        projection = shortcut_op(block, in_channels)
        shortcut = nn.Identity() if projection is None else nn.Sequential(*_conv_bn(projection, block.batch_norm))
    pool = {"maxpool": nn.MaxPool2d, "avgpool": nn.AvgPool2d}.get(block.downsample)
    return ConvBlock(nn.Sequential(*layers), shortcut, _ACTIVATIONS[block.activation](),
                     pool(2) if pool else nn.Identity())


def make_stem(stem: StemSpec, in_channels: int) -> nn.Sequential:
    """conv(k x k) -> BN -> ReLU, or an empty (identity) Sequential when `stem.filters` is 0."""
    if not stem.filters:
        return nn.Sequential()
    return nn.Sequential(*_conv_bn(ConvOp(in_channels, stem.filters, stem.kernel_size), True), nn.ReLU(inplace=True))


def make_head(spec: ArchSpec, feature_shape: tuple[int, int, int], num_classes: int) -> nn.Sequential:
    """Pooling, hidden fully connected layers, then the classifier."""
    c, h, w = feature_shape
    head = spec.head
    layers: list[nn.Module] = [nn.AdaptiveAvgPool2d(1), nn.Flatten()] if head.pooling == "gap" else [nn.Flatten()]
    width = c if head.pooling == "gap" else c * h * w
    for _ in range(head.fc_layers):
        if head.dropout:
            layers.append(nn.Dropout(head.dropout))
        layers += [nn.Linear(width, head.fc_width), nn.ReLU(inplace=True)]
        width = head.fc_width
    if head.dropout:
        layers.append(nn.Dropout(head.dropout))
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class InputNorm(nn.Module):
    """Bakes the dataset's normalisation into the model, so callers pass raw images.

    uint8 input is raw pixels in [0, 255]; float input is taken as already scaled to [0, 1].
    """

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        return (x - self.mean) / self.std


class ConvNet(nn.Module):
    """input_norm -> stem -> blocks (one `ConvBlock` each) -> head.

    `blocks` is a ModuleList so dashboards can hook each block's activation map.
    """

    def __init__(self, spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int,
                 mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.spec, self.input_shape, self.num_classes = spec, tuple(input_shape), num_classes  # to save and rebuild it
        self.plan = plan_convnet(spec, input_shape, num_classes)
        self.input_norm = InputNorm(mean, std)
        self.stem = make_stem(spec.stem, input_shape[0])
        channels = [spec.stem.filters or input_shape[0]] + [b.filters for b in spec.blocks]
        self.blocks = nn.ModuleList(make_conv_block(b, c) for b, c in zip(spec.blocks, channels))
        self.head = make_head(spec, self.plan.feature_shape, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(self.input_norm(x))
        for block in self.blocks:
            x = block(x)
        return x  # (B, C, H, W) entering the head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))  # (B, num_classes) logits


def build_convnet(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int,
                  mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> ConvNet:
    """Build the module; raises `ArchitectureError` before allocating anything if the shapes fail.

    Args:
        spec: the architecture.
        input_shape: (C, H, W) of one image.
        num_classes: output width.
        mean, std: per-channel normalisation in [0, 1] intensity units (default: none).
    """
    channels = input_shape[0]
    return ConvNet(spec, input_shape, num_classes,
                   mean or (0.0,) * channels, std or (1.0,) * channels)
