"""The builder: shapes match the analytic plan, collapse is caught before training, params/MACs are right."""

from __future__ import annotations

import pytest
import torch

from convsweep.lightning_modules.arch import ArchSpec, BlockSpec, HeadSpec, OptimSpec, SpecError
from convsweep.lightning_modules.network import ArchitectureError, build_convnet, plan_convnet


def arch(*blocks: BlockSpec, **head) -> ArchSpec:
    return ArchSpec(blocks=blocks, head=HeadSpec(**head))


@pytest.mark.parametrize("downsample", ["maxpool", "avgpool", "stride", "none"])
@pytest.mark.parametrize("kernel", [1, 3, 4, 5])
@pytest.mark.parametrize("pooling", ["gap", "flatten"])
def test_forward_shapes_match_the_plan(downsample: str, kernel: int, pooling: str) -> None:
    spec = arch(BlockSpec(8, kernel, downsample, "reflect" if kernel < 5 else "zeros", pointwise=True),
                BlockSpec(16, 3, downsample, "circular", batch_norm=False, activation="gelu"),
                pooling=pooling, fc_layers=1, fc_width=12, dropout=0.1)
    net = build_convnet(spec, (3, 16, 16), 7).eval()
    x = torch.randint(0, 255, (5, 3, 16, 16), dtype=torch.uint8)
    feats = net.features(x)
    assert tuple(feats.shape[1:]) == net.plan.feature_shape
    for block, layer in zip(net.blocks, net.plan.layers):
        assert tuple(block(torch.zeros(1, *layer.in_shape)).shape[1:]) == layer.out_shape
    assert net(x).shape == (5, 7)


def test_param_count_matches_torch() -> None:
    spec = arch(BlockSpec(8, 5, "stride", pointwise=True), BlockSpec(32, 3, "maxpool", batch_norm=False),
                pooling="flatten", fc_layers=2, fc_width=20)
    net = build_convnet(spec, (1, 28, 28), 10)
    assert net.plan.params == sum(p.numel() for p in net.parameters())


def test_macs_of_a_known_layer() -> None:
    plan = plan_convnet(arch(BlockSpec(4, 3, "none", batch_norm=False)), (1, 8, 8), 2)
    # conv: 1*4*3*3 weights applied at 8*8 positions; head: GAP -> linear 4->2
    assert plan.macs == 1 * 4 * 9 * 64 + 4 * 2


def test_four_stride_blocks_collapse_an_8x8_input_before_any_weight_exists() -> None:
    spec = arch(*[BlockSpec(8, 3, "maxpool")] * 4)
    with pytest.raises(ArchitectureError, match="block4: feature map collapses"):
        plan_convnet(spec, (1, 8, 8), 10)
    plan_convnet(arch(*[BlockSpec(8, 3, "stride")] * 4), (1, 8, 8), 10)  # 8->4->2->1->1: still valid


def test_reflect_padding_larger_than_the_map_is_rejected() -> None:
    spec = arch(BlockSpec(8, 3, "maxpool"), BlockSpec(8, 3, "maxpool"), BlockSpec(8, 5, "none", "reflect"))
    with pytest.raises(ArchitectureError, match="block3: reflect padding"):
        plan_convnet(spec, (1, 8, 8), 10)


def test_input_norm_bakes_in_normalisation() -> None:
    net = build_convnet(arch(BlockSpec(4)), (1, 4, 4), 2, mean=(0.5,), std=(0.25,))
    raw = torch.full((1, 1, 4, 4), 255, dtype=torch.uint8)
    assert torch.allclose(net.input_norm(raw), torch.full((1, 1, 4, 4), 2.0))
    assert torch.allclose(net.input_norm(raw.float() / 255), net.input_norm(raw))


def test_flat_params_use_the_sampler_names_and_round_trip() -> None:
    spec = arch(BlockSpec(8, 3), BlockSpec(16, 5, "stride"), pooling="flatten", dropout=0.2)
    flat = spec.flat_params()
    assert flat["depth"] == 2 and flat["block2.kernel_size"] == 5 and flat["head.dropout"] == 0.2
    assert "block3.filters" not in flat
    assert ArchSpec.from_dict(spec.to_dict()) == spec
    assert OptimSpec(lr=0.1).flat_params()["optim.lr"] == 0.1


def test_specs_reject_bad_values_and_unknown_keys() -> None:
    with pytest.raises(SpecError, match="downsample"):
        BlockSpec(8, 3, "maxpol")
    with pytest.raises(SpecError, match="unknown key"):
        ArchSpec.from_dict({"blocks": [{"filters": 8, "kernal_size": 3}]})
    with pytest.raises(SpecError, match="at least one conv block"):
        ArchSpec(blocks=())
