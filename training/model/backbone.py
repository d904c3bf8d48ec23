"""ResNet backbone returning C2..C5 (paper eq. 1), built from torchvision's block classes.

Why not ``torchvision.models.resnet50()`` directly: the stem width is hard-coded to 64 there, and CPU tests and the
demo need a narrow network (``width`` 16 -> stage widths 16/32/64/128). The module and parameter names are kept
identical to torchvision's ResNet (``conv1``, ``bn1``, ``layer1``..``layer4``) so ImageNet and COCO state dicts
load by name.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import DeformConv2d, FrozenBatchNorm2d

from training.model.config import BackboneConfig

#: blocks per stage (layer1..layer4) for each supported depth.
STAGE_BLOCKS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
}

NormFactory = Callable[[int], nn.Module]


def norm_factory(kind: str) -> NormFactory:
    """``frozen_bn`` for pretrained weights (batch 1-2 per GPU makes BN statistics useless), ``bn`` or ``gn``
    (32 groups, fewer when a narrow stage has fewer channels) for training from scratch."""
    if kind == "frozen_bn":
        return FrozenBatchNorm2d
    if kind == "bn":
        return nn.BatchNorm2d
    if kind == "gn":
        return lambda channels: nn.GroupNorm(math.gcd(32, channels), channels)
    raise ValueError(f"backbone.norm must be frozen_bn, bn or gn, got {kind!r}")


class ModulatedDeformConv3x3(DeformConv2d):
    """DCNv2 3x3 conv: offsets and modulation mask predicted by a zero-initialised 3x3 conv.

    Zero init makes the layer start as a plain 3x3 conv (times the 0.5 mask), so ImageNet weights stay meaningful;
    it subclasses DeformConv2d so its ``weight`` keeps the name and shape of the conv it replaces.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.conv_offset = nn.Conv2d(in_channels, 3 * 9, kernel_size=3, stride=stride, padding=1)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]  # offsets and mask come from x itself
        out = self.conv_offset(x)
        offset, mask_logits = out[:, :18], out[:, 18:]
        return super().forward(x, offset, torch.sigmoid(mask_logits))


class ResNetBackbone(nn.Module):
    """ResNet-18/34/50/101 body; ``forward`` returns [C2, C3, C4, C5] at strides 4, 8, 16, 32."""

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        if cfg.depth not in STAGE_BLOCKS:
            raise ValueError(f"backbone.depth must be one of {sorted(STAGE_BLOCKS)}, got {cfg.depth}")
        self.block: type[BasicBlock] | type[Bottleneck] = BasicBlock if cfg.depth < 50 else Bottleneck
        if cfg.dcn and self.block is not Bottleneck:
            raise ValueError("backbone.dcn needs a bottleneck ResNet (depth 50 or 101)")
        self.frozen_stages = cfg.frozen_stages
        self._norm = norm_factory(cfg.norm)
        width = cfg.width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = self._norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self._inplanes = width
        stages = []
        for index, blocks in enumerate(STAGE_BLOCKS[cfg.depth]):
            dcn = cfg.dcn and index >= 1  # stages 3-5 of the paper = layer2..layer4
            stages.append(self._make_layer(width * 2**index, blocks, stride=1 if index == 0 else 2, dcn=dcn))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels: list[int] = [width * 2**i * self.block.expansion for i in range(4)]
        self._freeze()

    def _make_layer(self, planes: int, blocks: int, stride: int, dcn: bool) -> nn.Sequential:
        downsample = None
        out_planes = planes * self.block.expansion
        if stride != 1 or self._inplanes != out_planes:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, out_planes, kernel_size=1, stride=stride, bias=False),
                self._norm(out_planes),
            )
        layers = []
        for index in range(blocks):
            block = self.block(
                self._inplanes,
                planes,
                stride=stride if index == 0 else 1,
                downsample=downsample if index == 0 else None,
                norm_layer=self._norm,
            )
            if dcn:  # Bottleneck puts the stride on its 3x3 conv2 (ResNet v1.5)
                block.conv2 = ModulatedDeformConv3x3(planes, planes, stride=block.conv2.stride[0])
            layers.append(block)
            self._inplanes = out_planes
        return nn.Sequential(*layers)

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages <= 0:
            return []
        stages = [self.layer1, self.layer2, self.layer3, self.layer4][: self.frozen_stages]
        return [self.conv1, self.bn1, *stages]

    def _freeze(self) -> None:
        for module in self._frozen_modules():
            for param in module.parameters():
                param.requires_grad_(False)

    def train(self, mode: bool = True) -> "ResNetBackbone":
        """Frozen stages keep their norm layers in eval mode: their statistics must not drift either."""
        super().train(mode)
        for module in self._frozen_modules():
            module.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]
