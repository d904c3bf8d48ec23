"""RoI head layers: the two-FC region feature head and the (C+1)-way box predictor (paper Sec. III-B.4).

Parameter names (``fc6``, ``fc7``, ``cls_score``, ``bbox_pred``) are torchvision's, so COCO checkpoints load by
name. The second FC's ReLU output is the paper's region feature f_i, which TR-Post compares between image and
template.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class RegionFeatureHead(nn.Module):
    """flatten -> fc6 -> ReLU -> fc7 -> ReLU: pooled [R, C, 7, 7] -> region features [R, representation_size]."""

    def __init__(self, in_channels: int, pooled_size: int, representation_size: int) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_channels * pooled_size * pooled_size, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, pooled: Tensor) -> Tensor:
        return F.relu(self.fc7(F.relu(self.fc6(pooled.flatten(start_dim=1)))))


class BoxPredictor(nn.Module):
    """Softmax classifier over C+1 classes (0 = background) and class-specific box deltas [R, 4 (C+1)]."""

    def __init__(self, representation_size: int, num_classes_with_bg: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(representation_size, num_classes_with_bg)
        self.bbox_pred = nn.Linear(representation_size, num_classes_with_bg * 4)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, region_features: Tensor) -> tuple[Tensor, Tensor]:
        return self.cls_score(region_features), self.bbox_pred(region_features)
