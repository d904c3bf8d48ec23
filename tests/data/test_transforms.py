"""Paired transforms keep image, template and boxes consistent; collate pads to multiples of 32."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from training.data.dataset import collate_batch
from training.data.sample import Sample
from training.data.transforms import HorizontalFlip, Resize, build_transforms, resize_scale, unscale_boxes


def _marked_sample(h: int = 60, w: int = 100) -> Sample:
    """Image and template share a bright rectangle exactly where the box is."""
    image = np.zeros((h, w, 3), np.uint8)
    image[10:30, 20:50] = 255
    return Sample(image=image, template=image.copy(), boxes=[[20, 10, 50, 30]], labels=[2], image_id="m")


def test_flip_known_box() -> None:
    s = HorizontalFlip(p=1.0)(_marked_sample())
    np.testing.assert_array_equal(s.boxes, [[50, 10, 80, 30]])  # x1' = W - x2, x2' = W - x1 with W = 100
    ys, xs = np.nonzero(s.image[..., 0])
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (50, 80, 10, 30)
    np.testing.assert_array_equal(s.image, s.template)
    assert HorizontalFlip(p=0.0)(_marked_sample()).boxes.tolist() == [[20, 10, 50, 30]]


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
