"""The CUDA kernels' pooling core, built for the host, against the model's own pooling (torchvision per level).

What runs on the GPU is ``engines/kernels/roi_align_core.h``; the very same source compiled with g++ runs here,
so these tests check the GPU arithmetic without a GPU.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from engines import custom_ops as co
from engines import host_kernels as hk
from training.model import roi_semantics as rs

IMAGE = (256, 320)  # (height, width) of the network input the boxes live in
CHANNELS = 3
BATCH = 2


@pytest.fixture(scope="module")
def features() -> list[np.ndarray]:
    rng = np.random.default_rng(1234)
    return [
        rng.standard_normal((BATCH, CHANNELS, IMAGE[0] // s, IMAGE[1] // s)).astype(np.float32)
        for s in rs.ROI_STRIDES
    ]


def _rois(boxes: np.ndarray, batch: np.ndarray | None = None) -> np.ndarray:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if batch is None:
        batch = np.arange(len(boxes)) % BATCH
    return np.concatenate([np.asarray(batch, np.float32)[:, None], boxes], axis=1).astype(np.float32)


def _random_boxes(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    side = np.exp(rng.uniform(np.log(2.0), np.log(700.0), size=(n, 2)))
    centre = rng.uniform(-40, [IMAGE[1] + 40, IMAGE[0] + 40], size=(n, 2))
    return np.concatenate([centre - side / 2, centre + side / 2], axis=1)


def _reference(features, rois, context_attrs: co.ContextAttributes | None = None) -> np.ndarray:
    feats = [torch.from_numpy(f) for f in features]
    with torch.no_grad():
        if context_attrs is None:
            return co.multilevel_roi_align_reference(feats, torch.from_numpy(rois)).numpy()
        return co.context_roi_align_reference(feats, torch.from_numpy(rois), context_attrs).numpy()


def _host_attrs(**overrides) -> hk.PoolingAttributes:
    return hk.default_attributes(IMAGE, **overrides)


def test_header_constants_are_roi_semantics() -> None:
    text = hk.CORE_HEADER.read_text()
    defines = dict(re.findall(r"#define (RDDN_\w+) ([^\s/]+)", text))
    assert int(defines["RDDN_OUTPUT_SIZE"]) == rs.ROI_ALIGN.output_size
    assert int(defines["RDDN_SAMPLING_RATIO"]) == rs.ROI_ALIGN.sampling_ratio
    assert bool(int(defines["RDDN_ALIGNED"])) == rs.ROI_ALIGN.aligned
    assert float(defines["RDDN_CANONICAL_SCALE"].rstrip("f")) == rs.CANONICAL_SCALE
    assert float(defines["RDDN_LEVEL_EPS"].rstrip("f")) == rs.LEVEL_EPS
    assert float(defines["RDDN_CONTEXT_SCALE"].rstrip("f")) == rs.CONTEXT_SCALE
    strides = tuple(int(defines[f"RDDN_STRIDE_P{level}"]) for level in rs.ROI_LEVELS)
    assert strides == rs.ROI_STRIDES
    assert int(defines["RDDN_MAX_LEVELS"]) == len(rs.ROI_LEVELS)


def test_default_attributes_come_from_roi_semantics() -> None:
    attrs = hk.default_attributes(IMAGE)
    assert attrs.spatial_scales == rs.ROI_ALIGN.spatial_scales
    assert (attrs.output_size, attrs.sampling_ratio, attrs.aligned) == (7, 2, True)
    assert (attrs.canonical_scale, attrs.level_eps, attrs.k) == (rs.CANONICAL_SCALE, rs.LEVEL_EPS, rs.CONTEXT_SCALE)
    assert (attrs.image_height, attrs.image_width) == IMAGE


def test_random_rois_match_torchvision_per_level(features) -> None:
    rois = _rois(_random_boxes(200, seed=0))
    levels = rs.map_roi_levels(torch.from_numpy(rois[:, 1:]))
    assert set(levels.tolist()) == {0, 1, 2, 3}, "the random boxes must exercise every level"
    out = hk.multilevel_roi_align(features, rois, _host_attrs())
    np.testing.assert_allclose(out, _reference(features, rois), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("side", [0.0, 55.9, 111.9, 112.0, 223.9, 224.0, 447.9, 448.0, 2000.0])
def test_level_boundaries(features, side: float) -> None:
    box = np.array([[20.0, 30.0, 20.0 + side, 30.0 + side]], np.float32)
    assert hk.map_roi_level(box[0], _host_attrs()) == int(rs.map_roi_levels(torch.from_numpy(box))[0])
    rois = _rois(box)
    np.testing.assert_allclose(hk.multilevel_roi_align(features, rois, _host_attrs()), _reference(features, rois),
                               rtol=1e-5, atol=1e-5)


def test_level_mapping_matches_on_many_boxes() -> None:
    boxes = _random_boxes(2000, seed=5).astype(np.float32)
    expected = rs.map_roi_levels(torch.from_numpy(boxes)).numpy()
    got = np.array([hk.map_roi_level(b, _host_attrs()) for b in boxes])
    np.testing.assert_array_equal(got, expected)


def test_tiny_and_border_boxes(features) -> None:
    h, w = IMAGE
    boxes = [
        [10.0, 10.0, 10.0, 10.0],  # empty
        [50.0, 60.0, 50.3, 60.2],  # sub-pixel
        [-30.0, -30.0, 5.0, 5.0],  # over the top-left corner
        [w - 4.0, h - 4.0, w + 60.0, h + 60.0],  # over the bottom-right corner
        [0.0, 0.0, float(w), float(h)],  # the whole image (P4)
        [-500.0, -500.0, -400.0, -400.0],  # entirely outside: all zeros
        [w - 1.0, 0.0, float(w), 1.0],  # last column
    ]
    rois = _rois(boxes)
    out = hk.multilevel_roi_align(features, rois, _host_attrs())
    np.testing.assert_allclose(out, _reference(features, rois), rtol=1e-5, atol=1e-5)
    assert not out[5].any()


@pytest.mark.parametrize("mode", ["concat", "context_only"])
def test_context_pooling_with_clipping(features, mode: str) -> None:
    h, w = IMAGE
    boxes = np.concatenate([
        _random_boxes(60, seed=3),
        [[0.0, 0.0, 40.0, 40.0], [w - 30.0, h - 50.0, w + 0.0, h + 0.0], [100.0, 100.0, 220.0, 228.0]],
    ])
    rois = _rois(boxes)
    attrs = _host_attrs(mode=mode, k=2.0)
    out = hk.context_roi_align(features, rois, attrs)
    expected = _reference(features, rois, co.ContextAttributes(k=2.0, image_height=h, image_width=w, mode=mode))
    assert out.shape == (len(rois), CHANNELS * (2 if mode == "concat" else 1), 7, 7)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_context_channels_are_roi_then_context(features) -> None:
    rois = _rois(_random_boxes(20, seed=8))
    both = hk.context_roi_align(features, rois, _host_attrs(mode="concat"))
    np.testing.assert_array_equal(both[:, :CHANNELS], hk.multilevel_roi_align(features, rois, _host_attrs()))
    np.testing.assert_array_equal(both[:, CHANNELS:], hk.context_roi_align(features, rois,
                                                                         _host_attrs(mode="context_only")))


def test_context_box_matches_roi_semantics() -> None:
    boxes = _random_boxes(500, seed=11).astype(np.float32)
    expected = rs.context_boxes(torch.from_numpy(boxes), IMAGE, k=1.5).numpy()
    got = np.array([hk.context_box(b, _host_attrs()) for b in boxes], np.float32)
    np.testing.assert_array_equal(got, expected)


def test_context_box_uses_the_rois_level_not_its_own(features) -> None:
    # a 100 px box is P2; its 1.5x context box (150 px) alone would be P3
    box = np.array([[100.0, 80.0, 200.0, 180.0]], np.float32)
    assert hk.map_roi_level(box[0], _host_attrs()) == 0
    assert hk.map_roi_level(hk.context_box(box[0], _host_attrs()), _host_attrs()) == 1
    rois = _rois(box)
    ctx = hk.context_roi_align(features, rois, _host_attrs(mode="context_only"))
    ctx_rois = _rois(np.array([hk.context_box(box[0], _host_attrs())]))
    on_p2 = hk.multilevel_roi_align([features[0]], ctx_rois, _host_attrs(spatial_scales=(0.25,)))
    np.testing.assert_array_equal(ctx, on_p2)


def test_fp16_features_within_half_precision(features) -> None:
    half = [f.astype(np.float16) for f in features]
    rois = _rois(_random_boxes(150, seed=21))
    out = hk.multilevel_roi_align(half, rois, _host_attrs())
    assert out.dtype == np.float16
    # reference on the same fp16 values, accumulated in float: only the final rounding to half differs
    expected = _reference([h.astype(np.float32) for h in half], rois)
    np.testing.assert_allclose(out.astype(np.float32), expected, rtol=2e-3, atol=2e-3)
    ctx = hk.context_roi_align(half, rois, _host_attrs())
    expected_ctx = _reference([h.astype(np.float32) for h in half], rois,
                              co.ContextAttributes(image_height=IMAGE[0], image_width=IMAGE[1]))
    np.testing.assert_allclose(ctx.astype(np.float32), expected_ctx, rtol=2e-3, atol=2e-3)


def test_fp16_large_image_boxes_keep_float_coordinates() -> None:
    # at 1333 px, fp16 box coordinates step by 1 px: the core keeps them float, so sub-pixel shifts still count
    rng = np.random.default_rng(4)
    feat = [rng.standard_normal((1, 2, 1344 // s, 1344 // s)).astype(np.float16) for s in rs.ROI_STRIDES]
    base = np.array([[1200.0, 1210.0, 1260.0, 1290.0]], np.float32)
    a = hk.multilevel_roi_align(feat, _rois(base, [0]), _host_attrs())
    b = hk.multilevel_roi_align(feat, _rois(base + 0.25, [0]), _host_attrs())
    assert np.float16(1200.25) == np.float16(1200.0)  # what an fp16 box would have lost
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("sampling_ratio, aligned", [(0, True), (2, False), (3, True)])
def test_other_roi_align_conventions_follow_torchvision(features, sampling_ratio: int, aligned: bool) -> None:
    rois = _rois(_random_boxes(40, seed=9))
    attrs = _host_attrs(sampling_ratio=sampling_ratio, aligned=aligned)
    ref_attrs = co.RoIPoolingAttributes(sampling_ratio=sampling_ratio, aligned=aligned)
    feats = [torch.from_numpy(f) for f in features]
    expected = co.multilevel_roi_align_reference(feats, torch.from_numpy(rois), ref_attrs).numpy()
    np.testing.assert_allclose(hk.multilevel_roi_align(features, rois, attrs), expected, rtol=1e-5, atol=1e-5)


def test_bad_inputs_are_named(features) -> None:
    rois = _rois(_random_boxes(3, seed=2))
    with pytest.raises(hk.HostKernelError, match="rois must be float32"):
        hk.multilevel_roi_align(features, rois.astype(np.float64), _host_attrs())
    with pytest.raises(hk.HostKernelError, match="batch index"):
        hk.multilevel_roi_align(features, _rois(_random_boxes(1, 0), [5]), _host_attrs())
    with pytest.raises(hk.HostKernelError, match="feature level 2"):
        bad = list(features)
        bad[2] = bad[2][:, :1]
        hk.multilevel_roi_align(bad, rois, _host_attrs())
    with pytest.raises(hk.HostKernelError, match="image size"):
        hk.context_roi_align(features, rois, hk.default_attributes((0, 0)))
    with pytest.raises(hk.HostKernelError, match="mode"):
        hk.context_roi_align(features, rois, _host_attrs(mode="sideways"))


def test_library_is_cached_by_source_hash() -> None:
    first = hk.build_library()
    assert first.is_file() and hk.source_hash(hk.find_compiler()) in first.name
    assert hk.build_library() == first
