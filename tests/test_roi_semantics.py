"""Pins the one definition of RoI pooling semantics that training, export and kernels share."""
import math

import pytest
import torch

from training.model.roi_semantics import (
    CANONICAL_SCALE,
    CONTEXT_SCALE,
    ROI_ALIGN,
    ROI_STRIDES,
    context_boxes,
    map_roi_levels,
)


def _square(side: float) -> torch.Tensor:
    return torch.tensor([[10.0, 10.0, 10.0 + side, 10.0 + side]])


@pytest.mark.parametrize(
    "side, level",
    # mmdetection's mapping with finest_scale 56: P2 below 112 px, P3 [112, 224), P4 [224, 448), P5 above
    [(0.0, 0), (1.0, 0), (56.0, 0), (111.9, 0), (112.0, 1), (223.9, 1), (224.0, 2), (447.9, 2), (448.0, 3),
     (5000.0, 3)],
)
def test_level_mapping_boundaries(side: float, level: int) -> None:
    assert int(map_roi_levels(_square(side))[0]) == level


def test_level_mapping_uses_geometric_mean_of_width_and_height() -> None:
    # 56 x 224 has sqrt(wh) = 112 -> P3, although its width alone says P2
    boxes = torch.tensor([[0.0, 0.0, 56.0, 224.0]])
    assert int(map_roi_levels(boxes)[0]) == 1


def test_roi_align_convention() -> None:
    assert (ROI_ALIGN.output_size, ROI_ALIGN.sampling_ratio, ROI_ALIGN.aligned) == (7, 2, True)
    assert ROI_STRIDES == (4, 8, 16, 32)
    assert ROI_ALIGN.spatial_scales == (0.25, 0.125, 0.0625, 0.03125)
    assert CANONICAL_SCALE == 56.0 and CONTEXT_SCALE == 1.5


def test_context_box_is_concentric_and_scaled() -> None:
    boxes = torch.tensor([[40.0, 50.0, 60.0, 90.0]])
    out = context_boxes(boxes, (200, 200), k=1.5)
    assert torch.allclose(out, torch.tensor([[35.0, 40.0, 65.0, 100.0]]))


def test_context_box_is_clipped_to_unpadded_image() -> None:
    boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0], [90.0, 40.0, 100.0, 60.0]])
    out = context_boxes(boxes, (64, 100), k=2.0)  # (height, width)
    assert torch.allclose(out[0], torch.tensor([0.0, 0.0, 30.0, 30.0]))
    assert torch.allclose(out[1], torch.tensor([85.0, 30.0, 100.0, 64.0]))
    assert math.isclose(float(out[:, 2].max()), 100.0) and math.isclose(float(out[:, 3].max()), 64.0)
