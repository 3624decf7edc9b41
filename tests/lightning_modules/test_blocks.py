"""The block vocabulary (convs, residual, bottleneck, separable, stem): shapes, params and MACs the plan
counts before training agree with the built torch module, and the defaults are the one-conv block."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from convsweep.lightning_modules.arch import DOWNSAMPLE, ArchSpec, BlockSpec, HeadSpec, SpecError, StemSpec
from convsweep.lightning_modules.network import ArchitectureError, ConvBlock, build_convnet, plan_convnet


def arch(*blocks: BlockSpec, stem: int = 0, **head) -> ArchSpec:
    return ArchSpec(blocks=blocks, head=HeadSpec(**head), stem=StemSpec(stem))


def measured_macs(net: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """MACs per image counted by hooks on every conv and linear layer of a real forward pass."""
    total = 0

    def conv(module: nn.Conv2d, _: tuple, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += out[0].numel() * (module.in_channels // module.groups) * kh * kw

    def linear(module: nn.Linear, _: tuple, out: torch.Tensor) -> None:
        nonlocal total
        total += module.in_features * module.out_features

    hooks = [m.register_forward_hook(conv if isinstance(m, nn.Conv2d) else linear)
             for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        net.eval()(torch.zeros(1, *input_shape))
    for hook in hooks:
        hook.remove()
    return total


OPTIONS = list(itertools.product([1, 2, 3], [False, True], [0, 2], [False, True], ["maxpool", "stride", "none"]))


@pytest.mark.parametrize(("convs", "residual", "bottleneck", "separable", "downsample"), OPTIONS)
def test_plan_counts_match_the_built_module(convs: int, residual: bool, bottleneck: int, separable: bool,
                                            downsample: str) -> None:
    options = dict(convs=convs, residual=residual, bottleneck=bottleneck, separable=separable)
    spec = arch(BlockSpec(8, 3, downsample, "reflect", **options),
                BlockSpec(16, 5, downsample, pointwise=True, batch_norm=False, activation="gelu", **options),
                stem=4 if residual else 0, pooling="flatten", fc_layers=1, fc_width=12)
    net = build_convnet(spec, (3, 12, 12), 5)
    assert net.plan.params == sum(p.numel() for p in net.parameters())
    assert net.plan.macs == measured_macs(net, (3, 12, 12))
    x = torch.zeros(2, 3, 12, 12)
    assert tuple(net.features(x).shape[1:]) == net.plan.feature_shape
    assert net(x).shape == (2, 5)


@pytest.mark.parametrize(("block", "input_shape", "params", "macs"), [
    # conv1 1->2 3x3 (18+2 bias) at 4x4: 288; conv2 2->2 (36+2): 576; 1x1 projection 1->2 (2+2): 32; head 2->3 (6+3): 6
    (BlockSpec(2, 3, "none", batch_norm=False, convs=2, residual=True), (1, 4, 4), 20 + 38 + 4 + 9, 288 + 576 + 32 + 6),
    # depthwise 2x(3x3) (18+2) at 4x4: 288; pointwise 2->4 (8+4): 128; head 4->3 (12+3): 12
    (BlockSpec(4, 3, "none", batch_norm=False, separable=True), (2, 4, 4), 20 + 12 + 15, 288 + 128 + 12),
    # 1x1 reduction 8->2 (16+2) at 4x4: 256; 3x3 2->8 (144+8): 2304; head 8->3 (24+3): 24
    (BlockSpec(8, 3, "none", batch_norm=False, bottleneck=4), (8, 4, 4), 18 + 152 + 27, 256 + 2304 + 24),
    # stride-2 3x3 2->2 (36+2) at 2x2: 144; the size changes, so a 1x1 stride-2 projection (4+2): 16; head 2->3: 6
    (BlockSpec(2, 3, "stride", batch_norm=False, residual=True), (2, 4, 4), 38 + 6 + 9, 144 + 16 + 6),
])
def test_hand_counted_params_and_macs(block: BlockSpec, input_shape: tuple[int, int, int], params: int,
                                      macs: int) -> None:
    plan = plan_convnet(arch(block), input_shape, 3)
    assert (plan.params, plan.macs) == (params, macs)


def test_stem_is_a_conv_bn_relu_counted_at_full_resolution() -> None:
    spec = arch(BlockSpec(8, 3, "maxpool"), stem=16)
    plan = plan_convnet(spec, (1, 8, 8), 2)
    stem = plan.layers[0]
    assert stem.name == "stem" and stem.out_shape == (16, 8, 8)
    assert (stem.params, stem.macs) == (1 * 16 * 9 + 2 * 16, 1 * 16 * 9 * 64)
    assert plan.layers[1].in_shape == (16, 8, 8)  # block1 reads the stem's channels
    net = build_convnet(spec, (1, 8, 8), 2)
    assert [type(m) for m in net.stem] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert len(build_convnet(arch(BlockSpec(8)), (1, 8, 8), 2).stem) == 0  # stem.filters: 0 = none


@pytest.mark.parametrize(("c_in", "filters", "downsample"), itertools.product([8, 16], [8, 16], DOWNSAMPLE))
def test_residual_projection_exactly_when_the_shape_changes(c_in: int, filters: int, downsample: str) -> None:
    spec = arch(BlockSpec(c_in, 1, "none"), BlockSpec(filters, 3, downsample, residual=True))
    block = build_convnet(spec, (1, 8, 8), 2).blocks[1]
    changes = c_in != filters or downsample == "stride"  # pooling comes after the sum, so it changes nothing
    if changes:
        assert isinstance(block.shortcut, nn.Sequential) and block.shortcut[0].kernel_size == (1, 1)
        assert block.shortcut[0].stride == ((2, 2) if downsample == "stride" else (1, 1))
    else:
        assert isinstance(block.shortcut, nn.Identity)


def test_identity_shortcut_adds_the_input_back() -> None:
    block = build_convnet(arch(BlockSpec(3, 3, "none", batch_norm=False, convs=2, residual=True)), (3, 5, 5), 2).blocks[0]
    for p in block.body.parameters():
        nn.init.zeros_(p)  # the body outputs 0, so the block is relu(x + 0)
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(block(x), torch.relu(x))


def test_defaults_build_todays_one_conv_block() -> None:
    block = build_convnet(arch(BlockSpec(8)), (1, 8, 8), 2).blocks[0]
    assert isinstance(block, ConvBlock) and block.shortcut is None
    assert [type(m) for m in block.body] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert isinstance(block.pool, nn.MaxPool2d)


def test_residual_body_ends_before_its_last_activation() -> None:
    block = build_convnet(arch(BlockSpec(8, convs=2, residual=True)), (1, 8, 8), 2).blocks[0]
    assert [type(m) for m in block.body] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.BatchNorm2d]


def test_separable_convs_are_depthwise() -> None:
    block = build_convnet(arch(BlockSpec(8, 5, "stride", separable=True)), (4, 8, 8), 2).blocks[0]
    depthwise, pointwise = [m for m in block.body if isinstance(m, nn.Conv2d)]
    assert depthwise.groups == 4 and depthwise.kernel_size == (5, 5) and depthwise.stride == (2, 2)
    assert pointwise.kernel_size == (1, 1) and pointwise.out_channels == 8


def test_a_second_conv_on_a_shrunk_map_is_shape_checked() -> None:
    spec = arch(BlockSpec(8, 3, "stride", "reflect", convs=2))
    with pytest.raises(ArchitectureError, match="block1: reflect padding of 1 needs a feature map larger than 1x1"):
        plan_convnet(spec, (1, 2, 2), 2)  # 2x2 -> stride-2 -> 1x1, where the second conv cannot reflect-pad


def test_new_fields_are_validated_and_round_trip() -> None:
    with pytest.raises(SpecError, match="convs must be 1..3"):
        BlockSpec(8, convs=4)
    with pytest.raises(SpecError, match="bottleneck must be 0"):
        BlockSpec(8, bottleneck=-1)
    with pytest.raises(SpecError, match="residual must be true or false"):
        BlockSpec(8, residual=1)  # type: ignore[arg-type]
    spec = arch(BlockSpec(8, convs=2, residual=True, bottleneck=2, separable=True), stem=16)
    assert ArchSpec.from_dict(spec.to_dict()) == spec
    flat = spec.flat_params()
    assert flat["block1.convs"] == 2 and flat["block1.residual"] is True and flat["stem.filters"] == 16
    old = ArchSpec.from_dict({"blocks": [{"filters": 8}]})  # a config logged before these fields existed
    assert old.stem == StemSpec() and old.blocks[0].convs == 1 and not old.blocks[0].residual
