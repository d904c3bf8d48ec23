"""RoI pooling: FPN level routing at the boundaries, context reference geometry, clipping and channel layout."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align

from training.model.roi_pooling import RoIFeaturePooler, multilevel_roi_align
from training.model.roi_semantics import ROI_ALIGN, context_boxes, map_roi_levels


def _features(height: int = 256, width: int = 256, channels: int = 3) -> list[torch.Tensor]:
    """Two images; each level a distinct random map so a wrong level routing shows."""
    torch.manual_seed(0)
    return [torch.rand(2, channels, height // s, width // s) for s in (4, 8, 16, 32)]


def _direct(features: list[torch.Tensor], rois: torch.Tensor, level: int) -> torch.Tensor:
    return roi_align(
        features[level], rois, ROI_ALIGN.output_size, ROI_ALIGN.spatial_scales[level],
        ROI_ALIGN.sampling_ratio, ROI_ALIGN.aligned,
    )


@pytest.mark.parametrize(
    "side, level",
    [(0.0, 0), (0.5, 0), (55.9, 0), (56.0, 0), (111.9, 0), (112.0, 1), (224.0, 2), (448.0, 3), (4000.0, 3)],
)
def test_level_mapping_at_boundaries(side: float, level: int) -> None:
    assert int(map_roi_levels(torch.tensor([[3.0, 3.0, 3.0 + side, 3.0 + side]]))[0]) == level


def test_zero_area_and_inverted_boxes_map_to_finest_level() -> None:
    boxes = torch.tensor([[10.0, 10.0, 10.0, 200.0], [50.0, 50.0, 40.0, 40.0]])
    assert map_roi_levels(boxes).tolist() == [0, 0]


def test_each_roi_is_pooled_from_its_mapped_level() -> None:
    features = _features()
    rois = torch.tensor(
        [[0, 10, 10, 40, 40], [1, 0, 0, 120, 120], [0, 0, 0, 230, 230], [1, 0, 0, 250, 250], [0, 5, 5, 6, 6]],
        dtype=torch.float32,
    )
    levels = map_roi_levels(rois[:, 1:])
    assert levels.tolist() == [0, 1, 2, 2, 0]
    pooled = multilevel_roi_align(features, rois, levels)
    for i, level in enumerate(levels.tolist()):
        assert torch.equal(pooled[i : i + 1], _direct(features, rois[i : i + 1], level))
    forced = multilevel_roi_align(features, rois, torch.full_like(levels, 3))
    assert torch.equal(forced, _direct(features, rois, 3))


def test_half_precision_features_are_pooled_in_float32() -> None:
    """FP16 features (the TensorRT variant's reference, autocast) are pooled in float32 and returned as FP16;
    explicit node attributes (spatial scales, output size) are honoured."""
    features = [f.half() for f in _features()]
    rois = torch.tensor([[0, 10, 10, 40, 40], [1, 0, 0, 120, 120]], dtype=torch.float32)
    levels = map_roi_levels(rois[:, 1:])
    pooled = multilevel_roi_align(features, rois, levels)
    assert pooled.dtype == torch.float16
    reference = multilevel_roi_align([f.float() for f in features], rois, levels).half()
    assert torch.equal(pooled, reference)
    coarse = multilevel_roi_align(features[:1], rois, torch.zeros_like(levels), spatial_scales=(0.25,), output_size=3)
    assert coarse.shape == (2, 3, 3, 3)
    direct = roi_align(features[0].float(), rois, 3, 0.25, ROI_ALIGN.sampling_ratio, ROI_ALIGN.aligned).half()
    assert torch.equal(coarse, direct)


def test_context_boxes_per_box_sizes_match_scalar_version() -> None:
    boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0], [90.0, 40.0, 100.0, 60.0], [10.0, 10.0, 30.0, 50.0]])
    sizes = torch.tensor([[64, 100], [64, 100], [40, 25]])
    out = context_boxes(boxes, sizes, k=2.0)
    assert torch.allclose(out[:2], context_boxes(boxes[:2], (64, 100), k=2.0))
    assert torch.allclose(out[2], torch.tensor([0.0, 0.0, 25.0, 40.0]))  # clipped to the third image's (h, w)


@pytest.mark.parametrize("k", [1.5, 2.0, 3.0])
def test_context_boxes_are_concentric_and_k_times_larger_inside_the_image(k: float) -> None:
    boxes = torch.tensor([[100.0, 80.0, 120.0, 110.0], [200.0, 200.0, 240.0, 210.0]])
    out = context_boxes(boxes, (1000, 1000), k=k)
    centre = lambda b: torch.stack(((b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2), 1)  # noqa: E731
    assert torch.allclose(centre(out), centre(boxes))
    assert torch.allclose(out[:, 2] - out[:, 0], k * (boxes[:, 2] - boxes[:, 0]))
    assert torch.allclose(out[:, 3] - out[:, 1], k * (boxes[:, 3] - boxes[:, 1]))


def test_context_pooling_uses_roi_level_and_clips_to_unpadded_size() -> None:
    features = _features()
    # RoI of 100 px -> P2; its 1.5x context (150 px) would map to P3 by itself, but must be pooled on P2
    rois = torch.tensor([[0, 0, 0, 100, 100], [1, 60, 60, 160, 160]], dtype=torch.float32)
    image_sizes = torch.tensor([[256, 256], [120, 140]])  # image 1 is padded: content 120 x 140
    pooled = RoIFeaturePooler("concat", k=1.5)(features, rois, image_sizes)
    assert pooled.shape == (2, 6, 7, 7)
    expected_ctx = torch.tensor([[0, 0, 0, 125, 125], [1, 35, 35, 140, 120]], dtype=torch.float32)
    assert torch.equal(pooled[:, :3], _direct(features, rois, 0))
    assert torch.allclose(pooled[:, 3:], _direct(features, expected_ctx, 0))
    only = RoIFeaturePooler("context_only", k=1.5)(features, rois, image_sizes)
    assert only.shape == (2, 3, 7, 7) and torch.allclose(only, pooled[:, 3:])
    plain = RoIFeaturePooler("none")(features, rois, image_sizes)
    assert torch.equal(plain, pooled[:, :3])


def test_pooling_gradient_flows_only_to_the_selected_level() -> None:
    features = [f.requires_grad_() for f in _features()]
    rois = torch.tensor([[0, 10, 10, 40, 40]], dtype=torch.float32)
    RoIFeaturePooler("concat")(features, rois, torch.tensor([[256, 256], [256, 256]])).sum().backward()
    assert features[0].grad.abs().sum() > 0
    assert all(f.grad is None or f.grad.abs().sum() == 0 for f in features[1:])


def test_pooler_rejects_unknown_mode_and_wrong_level_count() -> None:
    with pytest.raises(ValueError, match="context must be"):
        RoIFeaturePooler("global")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="4 FPN levels"):
        multilevel_roi_align(_features()[:3], torch.zeros(1, 5), torch.zeros(1, dtype=torch.int64))
