"""Feature pyramid network on C2..C5 -> P2..P5, paper eq. (3).

Four levels only: the paper's anchors 32..256 sit one per level on P2..P5, so no P6. Module names follow
torchvision's FeaturePyramidNetwork (``inner_blocks`` = lateral 1x1, ``layer_blocks`` = output 3x3) so COCO
checkpoints map onto it; with ``shared_output_conv`` ``layer_blocks`` holds the single shared 3x3 conv.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from training.model.config import FPNConfig


class FPN(nn.Module):
    """L5 = conv1x1(C5); L_i = conv1x1(C_i) + upsample(L_{i+1}); P_i = conv3x3(L_i)."""

    def __init__(self, in_channels: list[int], cfg: FPNConfig) -> None:
        super().__init__()
        out = cfg.out_channels
        self.upsample_mode = cfg.upsample
        self.shared_output_conv = cfg.shared_output_conv
        self.inner_blocks = nn.ModuleList(nn.Conv2d(c, out, kernel_size=1) for c in in_channels)
        num_out = 1 if cfg.shared_output_conv else len(in_channels)
        self.layer_blocks = nn.ModuleList(nn.Conv2d(out, out, kernel_size=3, padding=1) for _ in range(num_out))
        self.out_channels = out
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=1)
                nn.init.zeros_(module.bias)

    def _upsample(self, x: Tensor, like: Tensor) -> Tensor:
        # size= (not scale_factor=2) so an odd-sized level still lines up with its lateral
        if self.upsample_mode == "bilinear":
            return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)
        return F.interpolate(x, size=like.shape[-2:], mode="nearest")

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        laterals = [conv(c) for conv, c in zip(self.inner_blocks, features)]
        for i in range(len(laterals) - 2, -1, -1):
            laterals[i] = laterals[i] + self._upsample(laterals[i + 1], laterals[i])
        convs = [self.layer_blocks[0 if self.shared_output_conv else i] for i in range(len(laterals))]
        return [conv(lateral) for conv, lateral in zip(convs, laterals)]
