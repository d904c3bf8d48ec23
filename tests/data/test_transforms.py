"""Paired transforms keep image, template and boxes consistent; collate pads to multiples of 32."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from training.data.dataset import collate_batch
from training.data.sample import Sample
from training.data.transforms import Flip, Resize, Rotate90, build_transforms, resize_scale, unscale_boxes


def _marked_sample(h: int = 60, w: int = 100) -> Sample:
    """Image and template share a bright rectangle exactly where the box is."""
    image = np.zeros((h, w, 3), np.uint8)
    image[10:30, 20:50] = 255
    return Sample(image=image, template=image.copy(), boxes=[[20, 10, 50, 30]], labels=[2], image_id="m")


def test_flip_known_box() -> None:
    s = Flip(p=1.0)(_marked_sample())
    np.testing.assert_array_equal(s.boxes, [[50, 10, 80, 30]])  # x1' = W - x2, x2' = W - x1 with W = 100
    ys, xs = np.nonzero(s.image[..., 0])
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (50, 80, 10, 30)
    np.testing.assert_array_equal(s.image, s.template)
    assert Flip(p=0.0)(_marked_sample()).boxes.tolist() == [[20, 10, 50, 30]]


def _box_of_marks(a: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(a[..., 0])
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_vertical_flip_known_box() -> None:
    s = Flip(p=1.0, axis="vertical")(_marked_sample())
    np.testing.assert_array_equal(s.boxes, [[20, 30, 50, 50]])  # y1' = H - y2, y2' = H - y1 with H = 60
    assert _box_of_marks(s.image) == (20, 30, 50, 50)
    np.testing.assert_array_equal(s.image, s.template)
    with pytest.raises(ValueError, match="axis"):
        Flip(p=1.0, axis="diagonal")


def test_rotate90_known_box() -> None:
    sample = _marked_sample()  # 60 x 100 (H x W), marks at x 20..50, y 10..30
    s = Rotate90(p=1.0)(sample)
    assert s.image.shape == (100, 60, 3) and s.template.shape == s.image.shape
    np.testing.assert_array_equal(s.boxes, [[10, 50, 30, 80]])  # (y1, W - x2, y2, W - x1), W = 100
    assert _box_of_marks(s.image) == (10, 50, 30, 80)
    np.testing.assert_array_equal(s.image, s.template)
    # an asymmetric template proves the template turns with the image (not only equal-by-construction pairs)
    t = sample.template.copy()
    t[0, 0] = 7
    turned = Rotate90(p=1.0)(Sample(image=sample.image, template=t, boxes=sample.boxes, labels=sample.labels))
    assert turned.template[100 - 1, 0, 0] == 7  # pixel (x=0, y=0) -> (x=y, y=W-1-x) = (0, 99)
    assert Rotate90(p=0.0)(sample) is sample


def test_three_symmetries_draw_all_eight_orientations() -> None:
    """hflip, vflip and rot90 at 0.5 each give the 8 symmetries of the square with equal frequency."""
    image = np.zeros((8, 8, 3), np.uint8)
    image[0, 1] = 255  # one mark off every symmetry axis: each of the 8 orientations puts it elsewhere
    sample = Sample(image=image, template=image.copy(), boxes=[[1, 0, 2, 1]], labels=[1])
    t = build_transforms(True, train_short_sizes=(8, 8), train_max_size=8, flip_prob=0.5, vflip_prob=0.5,
                         rot90_prob=0.5)
    rng = np.random.default_rng(0)
    seen: dict[tuple[int, int], int] = {}
    for _ in range(800):
        ts = t(sample, rng)
        assert torch.equal(ts.image, ts.template)
        ys, xs = torch.nonzero(ts.image[0], as_tuple=True)
        x1, y1, x2, y2 = ts.boxes[0].int().tolist()
        assert (x1, y1, x2, y2) == (int(xs[0]), int(ys[0]), int(xs[0]) + 1, int(ys[0]) + 1), "box left its mark"
        seen[(int(xs[0]), int(ys[0]))] = seen.get((int(xs[0]), int(ys[0])), 0) + 1
    assert len(seen) == 8
    assert min(seen.values()) > 70 and max(seen.values()) < 130  # 100 each expected


def test_resize_scales_image_template_and_boxes_together() -> None:
    s = Resize((120, 120), 1000)(_marked_sample())  # short edge 60 -> 120: x2 scale
    assert s.image.shape == (120, 200, 3) and s.template.shape == s.image.shape
    np.testing.assert_allclose(s.boxes, [[40, 20, 100, 60]])
    np.testing.assert_array_equal(s.image, s.template)
    capped = Resize((120, 120), 150)(_marked_sample())  # long edge capped: 100 -> 150
    assert capped.image.shape == (90, 150, 3)
    np.testing.assert_allclose(capped.boxes, [[30, 15, 75, 45]])


def test_resize_scale_rule() -> None:
    assert resize_scale(600, 1000, 800, 1600) == pytest.approx(800 / 600)
    assert resize_scale(600, 2000, 800, 1600) == pytest.approx(0.8)
    with pytest.raises(ValueError):
        Resize((900, 800), 1600)


def test_random_train_pipeline_keeps_pairs_consistent() -> None:
    np.random.seed(0)
    t = build_transforms(True, train_short_sizes=(40, 90), train_max_size=200, flip_prob=0.5)
    sizes = set()
    for _ in range(8):
        ts = t(_marked_sample())
        assert torch.equal(ts.image, ts.template)
        x1, y1, x2, y2 = ts.boxes[0].round().int().tolist()
        inside = ts.image[0, y1 + 1 : y2 - 1, x1 + 1 : x2 - 1]
        assert inside.min() > 200, "the marked region moved away from its box"
        h, w = ts.image.shape[1:]
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h and w <= 200
        sizes.add(ts.image.shape[1])
    assert len(sizes) > 1, "multi-scale training should draw different sizes"


def test_test_pipeline_and_to_tensor() -> None:
    ts = build_transforms(False, test_short_size=30, test_max_size=1000)(_marked_sample())
    assert ts.image.dtype == torch.float32 and ts.image.shape == (3, 30, 50)
    assert float(ts.image.max()) == 255.0 and ts.orig_size == (60, 100) and ts.scale == (0.5, 0.5)
    np.testing.assert_allclose(unscale_boxes(ts.boxes.numpy(), ts.scale), [[20, 10, 50, 30]])


def test_collate_pads_to_32_and_keeps_sizes() -> None:
    a = build_transforms(False, test_short_size=60, test_max_size=1000)(_marked_sample())
    b = build_transforms(False, test_short_size=33, test_max_size=1000)(_marked_sample(h=40, w=40))
    images, templates, targets, sizes = collate_batch([a, b])
    assert images.shape == (2, 3, 64, 128) and templates.shape == images.shape
    assert sizes == [(60, 100), (33, 33)]
    assert images[1, :, 33:, :].abs().sum() == 0 and images[1, :, :, 33:].abs().sum() == 0  # zero padding
    assert targets[0]["boxes"].dtype == torch.float32 and targets[0]["labels"].dtype == torch.int64
    assert targets[0]["labels"].tolist() == [2] and targets[0]["is_normal"].dtype == torch.bool
    batch = collate_batch([a])
    assert batch.meta[0]["image_id"] == "m" and batch.meta[0]["orig_size"] == (60, 100)


def test_collate_without_templates_and_mixed_is_error() -> None:
    s = _marked_sample()
    no_t = Sample(image=s.image, template=None, boxes=s.boxes, labels=s.labels, image_id="nt")
    _, templates, _, _ = collate_batch([no_t, no_t])
    assert templates is None
    with pytest.raises(ValueError, match="nt"):
        collate_batch([s, no_t])
