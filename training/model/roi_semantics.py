"""The one definition of how region features are pooled: FPN level mapping, RoIAlign convention, context boxes.

Training, the ONNX export, the reference custom ops and the CUDA/host kernels in ``engines/kernels`` all
reproduce exactly what is written here; ``tests/test_roi_semantics.py`` pins each choice so that a change here
is a deliberate, visible change to every consumer.

Choices (and why):
- Level mapping as mmdetection: ``floor(log2(sqrt(w*h) / 56 + 1e-6))`` clamped to [0, 3] -> P2..P5, with
  ``w = x2 - x1`` (no +1). The paper quotes ``floor(log2(sqrt(wh)/56))`` "clipped into [2,5]"; the +1e-6 makes an
  exact power-of-two box land on the upper level despite float rounding.
- RoIAlign: 7x7 output, ``aligned=True`` (half-pixel offset, as detectron2/mmdetection), ``sampling_ratio=2``
  (a fixed 2x2 bilinear grid per bin: bounded work per bin for the GPU kernel, and torchvision's own default
  for FPN models), spatial scales 1/4, 1/8, 1/16, 1/32 for P2..P5.
- Context box (CR): concentric box ``(cx, cy, k*w, k*h)``, clipped to the *unpadded* image ``[0, W] x [0, H]``.
- The context box is pooled from the **same FPN level as its RoI** (the level is chosen by the RoI's size, not
  the context box's), so a RoI and its context are seen at the same feature resolution and one level lookup
  serves both in the context-pooling kernel.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: FPN levels the RoIs are pooled from, P2..P5.
ROI_LEVELS: tuple[int, ...] = (2, 3, 4, 5)
#: Feature strides of P2..P5 relative to the network input.
ROI_STRIDES: tuple[int, ...] = (4, 8, 16, 32)
#: mmdetection's ``finest_scale``: sqrt(wh) < 112 -> P2, [112, 224) -> P3, [224, 448) -> P4, larger -> P5.
CANONICAL_SCALE: float = 56.0
#: Added inside the log2 so that boxes exactly on a level boundary go to the upper level.
LEVEL_EPS: float = 1e-6


@dataclass(frozen=True)
class RoIAlignSpec:
    """RoIAlign convention shared by the model, the export and the kernels."""

    output_size: int = 7
    sampling_ratio: int = 2
    aligned: bool = True

    @property
    def spatial_scales(self) -> tuple[float, ...]:
        return tuple(1.0 / s for s in ROI_STRIDES)


ROI_ALIGN = RoIAlignSpec()

#: Default context scale k of the paper's context reference.
CONTEXT_SCALE: float = 1.5


def map_roi_levels(boxes: Tensor, num_levels: int = len(ROI_LEVELS)) -> Tensor:
    """Level index in [0, num_levels) for each box (x1, y1, x2, y2): 0 -> P2 ... 3 -> P5.

    The only implementation of the FPN level mapping: everything else calls this.
    """
    scale = torch.sqrt((boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0))
    levels = torch.floor(torch.log2(scale / CANONICAL_SCALE + LEVEL_EPS))
    return levels.clamp(min=0, max=num_levels - 1).to(torch.int64)


def context_boxes(boxes: Tensor, image_size: tuple[int, int] | Tensor, k: float = CONTEXT_SCALE) -> Tensor:
    """Concentric boxes scaled by ``k`` and clipped to the image (height, width): the CR region r_c.

    r = (cx, cy, w, h) -> r_c = (cx, cy, k*w, k*h), then clipped to [0, W] x [0, H].
    ``image_size`` is one (height, width) for all boxes, or a [R, 2] tensor of (height, width) per box (a batch of
    RoIs from differently sized images).
    """
    cx = (boxes[:, 0] + boxes[:, 2]) * 0.5
    cy = (boxes[:, 1] + boxes[:, 3]) * 0.5
    half_w = (boxes[:, 2] - boxes[:, 0]) * (0.5 * k)
    half_h = (boxes[:, 3] - boxes[:, 1]) * (0.5 * k)
    if isinstance(image_size, Tensor):
        height = image_size[:, 0].to(boxes.dtype)
        width = image_size[:, 1].to(boxes.dtype)
        x1 = (cx - half_w).clamp(min=0.0).minimum(width)
        y1 = (cy - half_h).clamp(min=0.0).minimum(height)
        x2 = (cx + half_w).clamp(min=0.0).minimum(width)
        y2 = (cy + half_h).clamp(min=0.0).minimum(height)
        return torch.stack((x1, y1, x2, y2), dim=1)
    height, width = image_size
    x1 = (cx - half_w).clamp(min=0.0, max=float(width))
    y1 = (cy - half_h).clamp(min=0.0, max=float(height))
    x2 = (cx + half_w).clamp(min=0.0, max=float(width))
    y2 = (cy + half_h).clamp(min=0.0, max=float(height))
    return torch.stack((x1, y1, x2, y2), dim=1)
