"""Annotated copies of defective frames (boxes + class + score drawn) for the operator screen and audits."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from inspector.backends.base import Detection

_COLORS = {"critical": (0, 0, 255), "warning": (0, 165, 255), "info": (255, 200, 0), None: (0, 255, 0)}  # BGR


def draw_detections(image_rgb: np.ndarray, detections: Sequence[Detection],
                    severities: Sequence[str | None] | None = None) -> np.ndarray:
    """Return a BGR copy of the frame with boxes drawn (BGR because it goes straight to cv2.imwrite)."""
    canvas = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    severities = severities or [None] * len(detections)
    for det, sev in zip(detections, severities):
        x1, y1, x2, y2 = (int(round(v)) for v in det.box)
        color = _COLORS.get(sev, _COLORS[None])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), color, 2)
        cv2.putText(canvas, f"{det.label} {det.score:.2f}", (x1, max(12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    color, 1, cv2.LINE_AA)
    return canvas


def save_annotated(path: Path, image_rgb: np.ndarray, detections: Sequence[Detection],
                   severities: Sequence[str | None] | None = None, quality: int = 85) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), draw_detections(image_rgb, detections, severities),
                       [cv2.IMWRITE_JPEG_QUALITY, quality]):
        raise OSError(f"cannot write annotated image {path}")
    return path
