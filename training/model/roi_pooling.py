"""Multi-level RoIAlign with optional context reference (CR), built only on ``roi_semantics``.

Level routing exports with standard ops: per level (a Python loop over the 4 levels, never over boxes), the
indices of the RoIs ``map_roi_levels`` assigns to it (NonZero), RoIAlign on those only (Gather + RoiAlign) and
``index_put`` back into RoI order (ScatterND), as torchvision's MultiScaleRoIAlign does. Each RoI is pooled once;
pooling every RoI on every level and selecting was measured 1.7x slower (1.2 s vs 0.7 s CPU for 2000 RoIs x 256
channels on one core).
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import Tensor, nn
from torchvision.ops import roi_align

from training.model.roi_semantics import ROI_ALIGN, context_boxes, map_roi_levels


def multilevel_roi_align(
    features: Sequence[Tensor],
    rois: Tensor,
    levels: Tensor,
    *,
    spatial_scales: Sequence[float] = ROI_ALIGN.spatial_scales,
    output_size: int = ROI_ALIGN.output_size,
    sampling_ratio: int = ROI_ALIGN.sampling_ratio,
    aligned: bool = ROI_ALIGN.aligned,
) -> Tensor:
    """RoIAlign each RoI [R, 5] (batch index, x1, y1, x2, y2) on P2..P5 at its given level index [R] in 0..3.

    The one per-level pooling of the project: the model's pooler, and the eager definition of the ``rddn`` custom
    ops (``engines.custom_ops``, which pass their node attributes). RoIAlign runs in float32 (as under autocast,
    and as the kernels accumulate); the result has the features' dtype.
    """
    if len(features) != len(spatial_scales):
        raise ValueError(f"expected {len(spatial_scales)} FPN levels (P2..P5), got {len(features)}")
    pooled_all = features[0].new_zeros((rois.shape[0], features[0].shape[1], output_size, output_size))
    for index, (feature, scale) in enumerate(zip(features, spatial_scales)):
        selected = torch.where(levels == index)[0]
        pooled = roi_align(
            feature if feature.dtype == torch.float32 else feature.float(),
            rois.index_select(0, selected),
            output_size=output_size,
            spatial_scale=scale,
            sampling_ratio=sampling_ratio,
            aligned=aligned,
        )
        pooled_all = pooled_all.index_put((selected,), pooled.to(pooled_all.dtype))
    return pooled_all


class RoIFeaturePooler(nn.Module):
    """Region features of the RoIs, plus (CR) those of their concentric context boxes at the RoI's own level.

    ``context``: ``none`` -> [R, C, 7, 7]; ``concat`` -> [R, 2C, 7, 7] (RoI then context, the paper's CR);
    ``context_only`` -> [R, C, 7, 7] of the context boxes alone (the paper's CR* ablation).
    """

    def __init__(self, context: Literal["none", "concat", "context_only"] = "none", k: float = 1.5) -> None:
        super().__init__()
        if context not in ("none", "concat", "context_only"):
            raise ValueError(f"context must be none, concat or context_only, got {context!r}")
        self.context = context
        self.k = k

    def channel_multiplier(self) -> int:
        return 2 if self.context == "concat" else 1

    def forward(self, features: Sequence[Tensor], rois: Tensor, image_sizes: Tensor) -> Tensor:
        """``rois`` [R, 5]; ``image_sizes`` [N, 2] (height, width) of each image's unpadded content."""
        levels = map_roi_levels(rois[:, 1:])
        if self.context == "none":
            return multilevel_roi_align(features, rois, levels)
        sizes = image_sizes.to(rois.device)[rois[:, 0].long()]
        ctx = torch.cat((rois[:, :1], context_boxes(rois[:, 1:], sizes, self.k)), dim=1)
        if self.context == "context_only":
            return multilevel_roi_align(features, ctx, levels)
        # one RoIAlign per level over RoIs and context boxes together, then side by side along channels
        both = multilevel_roi_align(features, torch.cat((rois, ctx)), torch.cat((levels, levels)))
        roi_part, ctx_part = both.split(rois.shape[0])
        return torch.cat((roi_part, ctx_part), dim=1)
