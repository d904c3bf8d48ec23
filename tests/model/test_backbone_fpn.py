"""Backbone (ResNet C2..C5, narrow widths, norms, frozen stages, DCNv2) and FPN (eq. 3)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.ops import FrozenBatchNorm2d

from training.model.backbone import ModulatedDeformConv3x3, ResNetBackbone
from training.model.config import BackboneConfig, FPNConfig
from training.model.fpn import FPN


@pytest.mark.parametrize(
    "depth, width, channels",
    [(18, 16, [16, 32, 64, 128]), (34, 8, [8, 16, 32, 64]), (50, 16, [64, 128, 256, 512]), (101, 8, [32, 64, 128, 256])],
)
def test_backbone_returns_c2_to_c5_at_strides_4_to_32(depth: int, width: int, channels: list[int]) -> None:
    backbone = ResNetBackbone(BackboneConfig(depth=depth, width=width, norm="gn")).eval()
    assert backbone.out_channels == channels
    with torch.no_grad():
        features = backbone(torch.rand(1, 3, 64, 96))
    assert [tuple(f.shape) for f in features] == [(1, c, 64 // s, 96 // s) for c, s in zip(channels, (4, 8, 16, 32))]


def test_full_width_backbone_matches_torchvision_resnet_names_and_shapes() -> None:
    from torchvision.models import resnet50

    ours = ResNetBackbone(BackboneConfig(depth=50)).state_dict()
    theirs = {k: v for k, v in resnet50(weights=None).state_dict().items()
              if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
    assert set(theirs) == set(ours)
    assert all(ours[k].shape == v.shape for k, v in theirs.items())


@pytest.mark.parametrize("norm, cls", [("frozen_bn", FrozenBatchNorm2d), ("bn", nn.BatchNorm2d), ("gn", nn.GroupNorm)])
def test_norm_choice(norm: str, cls: type) -> None:
    backbone = ResNetBackbone(BackboneConfig(depth=18, width=16, norm=norm))
    assert isinstance(backbone.bn1, cls) and isinstance(backbone.layer4[0].bn2, cls)


@pytest.mark.parametrize("frozen", [0, 1, 2])
def test_frozen_stages_have_no_gradients_and_stay_in_eval(frozen: int) -> None:
    backbone = ResNetBackbone(BackboneConfig(depth=18, width=16, norm="bn", frozen_stages=frozen)).train()
    stem_frozen = not backbone.conv1.weight.requires_grad
    assert stem_frozen == (frozen >= 1)
    for index, layer in enumerate([backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4], start=1):
        assert all(p.requires_grad == (index > frozen) for p in layer.parameters())
        assert layer.training == (index > frozen)
    assert backbone.bn1.training == (frozen == 0)


def test_dcn_replaces_3x3_convs_of_stages_3_to_5_only() -> None:
    backbone = ResNetBackbone(BackboneConfig(depth=50, width=8, dcn=True, norm="gn"))
    assert not any(isinstance(m, ModulatedDeformConv3x3) for m in backbone.layer1.modules())
    for layer in (backbone.layer2, backbone.layer3, backbone.layer4):
        assert all(isinstance(block.conv2, ModulatedDeformConv3x3) for block in layer)
    assert backbone.layer2[0].conv2.stride == (2, 2) and backbone.layer2[1].conv2.stride == (1, 1)
    with pytest.raises(ValueError, match="bottleneck"):
        ResNetBackbone(BackboneConfig.model_construct(depth=18, width=16, dcn=True, norm="gn", frozen_stages=1))


def test_dcn_starts_as_half_a_plain_conv() -> None:
    """Zero-initialised offsets and mask logits: sampling on the regular grid with mask sigmoid(0) = 0.5."""
    torch.manual_seed(0)
    dcn = ModulatedDeformConv3x3(4, 6, stride=2)
    x = torch.rand(1, 4, 9, 9)
    plain = nn.functional.conv2d(x, dcn.weight, stride=2, padding=1)
    assert torch.allclose(dcn(x), 0.5 * plain, atol=1e-5)
    assert dcn.weight.shape == (6, 4, 3, 3)


def test_fpn_shapes_and_shared_output_conv() -> None:
    features = [torch.rand(1, c, 32 // s, 32 // s) for c, s in zip((8, 16, 32, 64), (1, 2, 4, 8))]
    fpn = FPN([8, 16, 32, 64], FPNConfig(out_channels=12, shared_output_conv=False))
    outs = fpn(features)
    assert [tuple(o.shape) for o in outs] == [(1, 12, 32 // s, 32 // s) for s in (1, 2, 4, 8)]
    assert len(fpn.layer_blocks) == 4
    shared = FPN([8, 16, 32, 64], FPNConfig(out_channels=12))  # default: the paper's one shared 3x3 conv
    assert len(shared.layer_blocks) == 1
    assert [tuple(o.shape) for o in shared(features)] == [tuple(o.shape) for o in outs]


def test_fpn_top_down_follows_eq3() -> None:
    """With identity-like convs, P_i = L_i = lateral_i + upsample(L_{i+1}); check bilinear vs nearest."""
    features = [torch.rand(1, 1, 16 // s, 16 // s) for s in (1, 2, 4, 8)]
    for mode in ("bilinear", "nearest"):
        fpn = FPN([1, 1, 1, 1], FPNConfig(out_channels=8, upsample=mode))
        for conv in fpn.inner_blocks:
            conv.weight.data.fill_(1.0)  # every lateral channel = C_i
        for conv in fpn.layer_blocks:
            conv.weight.data.zero_()
            for c in range(8):
                conv.weight.data[c, c, 1, 1] = 1.0  # identity 3x3
        outs = [o[:, :1] for o in fpn(features)]
        expected = features[3]
        assert torch.allclose(outs[3], expected)
        for i in (2, 1, 0):
            up = nn.functional.interpolate(expected, size=features[i].shape[-2:], mode=mode,
                                           **({"align_corners": False} if mode == "bilinear" else {}))
            expected = features[i] + up
            assert torch.allclose(outs[i], expected, atol=1e-6)


def test_fpn_upsample_default_is_the_papers_bilinear() -> None:
    assert FPNConfig().upsample == "bilinear"
