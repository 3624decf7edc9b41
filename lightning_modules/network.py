"""Build a conv net from an `ArchSpec`, with shape inference before any weight exists.

`plan_convnet` walks the spec analytically (no forward pass), so an architecture whose
feature map collapses, e.g. four stride-2 blocks on an 8x8 input, is rejected before the
trial spends a second training. The same walk gives the parameter count and MACs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from convsweep.lightning_modules.arch import ArchSpec, BlockSpec
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


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def _conv_cost(c_in: int, c_out: int, k: int, h_out: int, w_out: int, bn: bool) -> tuple[int, int]:
    params = c_in * c_out * k * k + (2 * c_out if bn else c_out)  # weight + (BN affine | bias)
    return params, c_in * c_out * k * k * h_out * w_out


def _plan_block(i: int, block: BlockSpec, shape: tuple[int, int, int]) -> LayerPlan:
    c, h, w = shape
    k, pad = block.kernel_size, block.kernel_size // 2
    stride = 2 if block.downsample == "stride" else 1
    if block.padding_mode != "zeros" and pad >= min(h, w):
        raise ArchitectureError(
            f"block{i}: {block.padding_mode} padding of {pad} needs a feature map larger than {h}x{w}"
        )
    h2, w2 = _conv_out(h, k, stride, pad), _conv_out(w, k, stride, pad)
    if h2 < 1 or w2 < 1:
        raise ArchitectureError(f"block{i}: feature map collapses ({h}x{w} -> {h2}x{w2}) with kernel {k}, stride {stride}")
    params, macs = _conv_cost(c, block.filters, k, h2, w2, block.batch_norm)
    if block.pointwise:
        p2, m2 = _conv_cost(block.filters, block.filters, 1, h2, w2, block.batch_norm)
        params, macs = params + p2, macs + m2
    if block.downsample in ("maxpool", "avgpool"):
        if h2 < 2 or w2 < 2:
            raise ArchitectureError(f"block{i}: feature map collapses ({h}x{w} -> {h2 // 2}x{w2 // 2}) at the 2x2 {block.downsample}")
        h2, w2 = h2 // 2, w2 // 2
    return LayerPlan(f"block{i}", shape, (block.filters, h2, w2), params, macs)


def plan_convnet(spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int) -> NetworkPlan:
    """Walk the spec's shapes and costs; raise `ArchitectureError` if it cannot be built.

    Args:
        spec: the architecture.
        input_shape: (C, H, W) of one image.
        num_classes: width of the output layer.
    """
    shape = tuple(int(s) for s in input_shape)
    layers = []
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


def make_conv_block(block: BlockSpec, in_channels: int) -> nn.Sequential:
    """conv -> [BN] -> act -> [1x1 conv -> [BN] -> act] -> [pool]."""
    stride = 2 if block.downsample == "stride" else 1
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, block.filters, block.kernel_size, stride=stride,
                  padding=block.kernel_size // 2, padding_mode=block.padding_mode, bias=not block.batch_norm)
    ]
    if block.batch_norm:
        layers.append(nn.BatchNorm2d(block.filters))
    layers.append(_ACTIVATIONS[block.activation]())
    if block.pointwise:
        layers.append(nn.Conv2d(block.filters, block.filters, 1, bias=not block.batch_norm))
        if block.batch_norm:
            layers.append(nn.BatchNorm2d(block.filters))
        layers.append(_ACTIVATIONS[block.activation]())
    if block.downsample == "maxpool":
        layers.append(nn.MaxPool2d(2))
    elif block.downsample == "avgpool":
        layers.append(nn.AvgPool2d(2))
    return nn.Sequential(*layers)


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
    """input_norm -> blocks (one nn.Sequential per conv block) -> head.

    `blocks` is a ModuleList so dashboards can hook each block's activation map.
    """

    def __init__(self, spec: ArchSpec, input_shape: tuple[int, int, int], num_classes: int,
                 mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.plan = plan_convnet(spec, input_shape, num_classes)
        self.input_norm = InputNorm(mean, std)
        channels = [input_shape[0]] + [b.filters for b in spec.blocks]
        self.blocks = nn.ModuleList(make_conv_block(b, c) for b, c in zip(spec.blocks, channels))
        self.head = make_head(spec, self.plan.feature_shape, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_norm(x)
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
