"""Paired transforms: whatever happens to the image happens identically to its template and its boxes.

A template that is resized or flipped differently from its image would break TR-Pre/TR-Inter silently (the
difference image would show every edge as a defect), so every geometric transform here acts on a whole
:class:`~training.data.sample.Sample`.

Randomness comes from the global numpy generator unless an ``rng`` is passed: the training loop's
``SeededSamples`` seeds the global generators per (seed, epoch, index), which makes augmentation reproducible
with any number of loader workers.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Callable, Sequence

import cv2
import numpy as np

from training.data.sample import Sample

if TYPE_CHECKING:
    import torch


def _randint(rng: np.random.Generator | None, lo: int, hi: int) -> int:
    """Uniform integer in [lo, hi] (inclusive)."""
    return int(rng.integers(lo, hi + 1)) if rng is not None else int(np.random.randint(lo, hi + 1))


def _uniform(rng: np.random.Generator | None) -> float:
    return float(rng.random()) if rng is not None else float(np.random.random())


def resize_scale(h: int, w: int, short_size: int, max_size: int) -> float:
    """Scale that brings the short edge to ``short_size`` unless the long edge would exceed ``max_size``."""
    scale = short_size / min(h, w)
    if max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    return scale


@dataclass
class Resize:
    """Multi-scale resize: short edge uniform in ``short_sizes`` (inclusive), long edge capped at ``max_size``.

    ``short_sizes=(800, 800)`` is the fixed test-time resize. Boxes scale per axis with the rounded output size,
    so they stay exact with respect to the resized pixels.
    """

    short_sizes: tuple[int, int] = (800, 800)
    max_size: int = 1600

    def __post_init__(self) -> None:
        lo, hi = self.short_sizes
        if not 0 < lo <= hi or self.max_size <= 0:
            raise ValueError(f"Resize needs 0 < short_sizes[0] <= short_sizes[1] and max_size > 0, got {self}")

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        h, w = sample.height, sample.width
        lo, hi = self.short_sizes
        short = lo if lo == hi else _randint(rng, lo, hi)
        scale = resize_scale(h, w, short, self.max_size)
        new_w, new_h = max(1, round(w * scale)), max(1, round(h * scale))
        if (new_h, new_w) == (h, w):
            return sample
        size = (new_w, new_h)
        image = cv2.resize(sample.image, size, interpolation=cv2.INTER_LINEAR)
        template = None if sample.template is None else cv2.resize(sample.template, size, interpolation=cv2.INTER_LINEAR)
        factors = np.array([new_w / w, new_h / h, new_w / w, new_h / h], np.float32)
        return replace(sample, image=image, template=template, boxes=sample.boxes * factors)


@dataclass
class Flip:
    """Mirror image, template and boxes with probability ``p``: ``axis="horizontal"`` (left-right) or
    ``"vertical"`` (top-bottom)."""

    p: float = 0.5
    axis: str = "horizontal"

    def __post_init__(self) -> None:
        if self.axis not in ("horizontal", "vertical"):
            raise ValueError(f"Flip axis must be 'horizontal' or 'vertical', got {self.axis!r}")

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        if self.p <= 0.0 or _uniform(rng) >= self.p:
            return sample
        horizontal = self.axis == "horizontal"
        size = sample.width if horizontal else sample.height
        lo, hi = (0, 2) if horizontal else (1, 3)
        boxes = sample.boxes.copy()
        boxes[:, [lo, hi]] = size - sample.boxes[:, [hi, lo]]

        def mirror(a: np.ndarray) -> np.ndarray:
            return np.ascontiguousarray(a[:, ::-1] if horizontal else a[::-1])

        template = None if sample.template is None else mirror(sample.template)
        return replace(sample, image=mirror(sample.image), template=template, boxes=boxes)


@dataclass
class Rotate90:
    """Rotate image, template and boxes by 90 degrees counter-clockwise with probability ``p``.

    Together with a horizontal and a vertical :class:`Flip` at p = 0.5 each this draws uniformly from the 8
    symmetries of the square (rot90 o {identity, h, v, h+v} are the other four), the augmentation that suits
    boards whose tracks and defects have no preferred orientation. A pixel (x, y) of a W-wide image goes to
    (y, W - 1 - x); a box x1y1x2y2 to (y1, W - x2, y2, W - x1).
    """

    p: float = 0.5

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> Sample:
        if self.p <= 0.0 or _uniform(rng) >= self.p:
            return sample
        w = sample.width
        b = sample.boxes
        boxes = np.stack([b[:, 1], w - b[:, 2], b[:, 3], w - b[:, 0]], axis=1).astype(np.float32)
        template = None if sample.template is None else np.ascontiguousarray(np.rot90(sample.template))
        return replace(sample, image=np.ascontiguousarray(np.rot90(sample.image)), template=template, boxes=boxes)


@dataclass
class TensorSample:
    """A transformed sample as tensors: what ``build_dataset`` yields and ``collate_batch`` batches.

    ``scale`` = (sx, sy), resized size / original size: divide predicted x by sx and y by sy to get boxes in
    the original image's pixels (:func:`unscale_boxes`).
    """

    image: "torch.Tensor"  # float32 [3, H, W], RGB, 0..255
    template: "torch.Tensor | None"
    boxes: "torch.Tensor"  # float32 [K, 4]
    labels: "torch.Tensor"  # int64 [K]
    is_normal: bool
    image_id: str
    path: str
    orig_size: tuple[int, int]  # (h, w) before any transform
    scale: tuple[float, float]  # (sx, sy)


def to_tensor(sample: Sample, orig_size: tuple[int, int]) -> TensorSample:
    """HWC uint8 -> CHW float32 0..255 (the model normalises: mean/std or TR-Pre)."""
    import torch

    def chw(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).float()

    h0, w0 = orig_size
    return TensorSample(
        image=chw(sample.image),
        template=None if sample.template is None else chw(sample.template),
        boxes=torch.from_numpy(sample.boxes.astype(np.float32)).reshape(-1, 4),
        labels=torch.from_numpy(sample.labels.astype(np.int64)).reshape(-1),
        is_normal=bool(sample.is_normal),
        image_id=sample.image_id,
        path=sample.path,
        orig_size=(h0, w0),
        scale=(sample.width / w0, sample.height / h0),
    )


def unscale_boxes(boxes: np.ndarray, scale: tuple[float, float]) -> np.ndarray:
    """Boxes in resized-input pixels -> original-image pixels (inverse of the Resize scaling)."""
    sx, sy = scale
    return np.asarray(boxes, np.float32) / np.array([sx, sy, sx, sy], np.float32)


class Compose:
    """Apply sample transforms in order, then :func:`to_tensor`."""

    def __init__(self, transforms: Sequence[Callable[..., Sample]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample, rng: np.random.Generator | None = None) -> TensorSample:
        orig = (sample.height, sample.width)
        for t in self.transforms:
            sample = t(sample, rng)
        return to_tensor(sample, orig)


def build_transforms(
    train: bool,
    train_short_sizes: tuple[int, int] = (600, 1000),
    train_max_size: int = 1600,
    test_short_size: int = 800,
    test_max_size: int = 1600,
    flip_prob: float = 0.5,
    vflip_prob: float = 0.0,
    rot90_prob: float = 0.0,
) -> Compose:
    """The paper's pipeline (multi-scale + horizontal flip for training, a fixed resize for testing), plus the
    optional vertical flip and 90-degree rotation (all eight square symmetries at 0.5 / 0.5 / 0.5)."""
    if train:
        return Compose([
            Resize(tuple(train_short_sizes), train_max_size),
            Flip(flip_prob, "horizontal"),
            Flip(vflip_prob, "vertical"),
            Rotate90(rot90_prob),
        ])
    return Compose([Resize((test_short_size, test_short_size), test_max_size)])
