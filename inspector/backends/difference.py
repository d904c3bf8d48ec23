"""A real classical detector: absolute difference to the aligned template, threshold, morphology, connected
components -> boxes of one generic class.

Why it exists: it is the "trivial detector" of the daemon benchmark (its cost is a few ms, so the benchmark
shows the daemon's own overhead), it lets the end-to-end tests run a real detection path in milliseconds, and
it is what the demo falls back to when no trained artifact is installed. It is template reference (the
paper's TR idea) without learning: it flags every change, relevant or not.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from inspector.backends.base import Detection


class DifferenceBackend:
    needs_template = True
    thread_safe = True  # stateless: the pipeline may call detect from several analysis threads

    def __init__(self, threshold: int = 40, min_area: int = 12, blur: int = 5, open_kernel: int = 3,
                 border: int = 8, class_names: Sequence[str] = ("defect",), max_detections: int = 100) -> None:
        if not class_names:
            raise ValueError("difference backend: class_names must not be empty")
        self.class_names = tuple(class_names)
        self.threshold = int(threshold)
        self.min_area = int(min_area)
        self.blur = int(blur) | 1
        self.border = int(border)  # ignore a margin: alignment warps leave interpolated edges
        self.max_detections = int(max_detections)
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (open_kernel, open_kernel))

    def _detect_one(self, image: np.ndarray, template: np.ndarray | None) -> list[Detection]:
        if template is None:
            raise ValueError("difference backend needs a template for every frame")
        if template.shape != image.shape:
            raise ValueError(f"template shape {template.shape} != image shape {image.shape}")
        diff = cv2.absdiff(image, template)
        # per-pixel max over channels; cv2.max on channel views is ~30x faster than ndarray.max(axis=2)
        gray = cv2.max(cv2.max(diff[:, :, 0], diff[:, :, 1]), diff[:, :, 2]) if diff.ndim == 3 else diff
        gray = cv2.GaussianBlur(gray, (self.blur, self.blur), 0)
        _, mask = cv2.threshold(gray, self.threshold, 255, cv2.THRESH_BINARY)
        if self.border:
            b = self.border
            mask[:b], mask[-b:], mask[:, :b], mask[:, -b:] = 0, 0, 0, 0
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, self._kernel)
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        found: list[Detection] = []
        for x, y, w, h, area in stats[1:count]:
            if area < self.min_area:
                continue
            patch = gray[y:y + h, x:x + w]
            # score: how far above the threshold the strongest change is, squashed into (0.5, 1]
            score = float(min(1.0, 0.5 + 0.5 * (float(patch.max()) - self.threshold) / max(1, 255 - self.threshold)))
            found.append(Detection(0, self.class_names[0], score, (float(x), float(y), float(x + w), float(y + h))))
        found.sort(key=lambda d: -d.score)
        return found[: self.max_detections]

    def detect(self, images: Sequence[np.ndarray], templates: Sequence[np.ndarray | None]) -> list[list[Detection]]:
        if len(images) != len(templates):
            raise ValueError(f"{len(images)} images but {len(templates)} templates")
        return [self._detect_one(img, tpl) for img, tpl in zip(images, templates)]

    def close(self) -> None:
        return None
