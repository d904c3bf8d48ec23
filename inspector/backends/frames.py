"""Frames <-> graph, the one definition every artifact backend (ONNX Runtime, TensorRT) shares.

``engines/artifact.py`` fixes the convention: resizing is outside the graph (frames are stretched to the input
size with OpenCV, no letterbox), boxes come back in input pixels and are scaled back per axis, labels are 0-based
indices into ``class_names``, and outputs are padded to a fixed count with ``num_detections`` saying how many are
real. Two copies of this drifted once a backend changed; one module keeps the backends' results identical.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import cv2
import numpy as np

from inspector.backends.base import Detection

OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")


def resize_batch(frames: Sequence[np.ndarray], size_hw: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 RGB frames -> float32 [N, 3, H, W] at the graph's input size (stretched, as the artifact says).

    Frames already at the input size are not resampled (bit-exact pixels for a station that matches the graph)."""
    h, w = size_hw
    batch = [f if f.shape[:2] == (h, w) else cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR) for f in frames]
    return np.ascontiguousarray(np.stack(batch).transpose(0, 3, 1, 2), dtype=np.float32)


def label_name(label: int, class_names: Sequence[str]) -> str:
    """The class name of a 0-based graph label; an out-of-range label stays visible as ``class_<n>``."""
    return class_names[label] if 0 <= label < len(class_names) else f"class_{label}"


def detections_from_outputs(outputs: Mapping[str, np.ndarray], frame_shapes: Sequence[tuple[int, ...]],
                            size_hw: tuple[int, int], class_names: Sequence[str]) -> list[list[Detection]]:
    """The graph's padded outputs -> per-frame :class:`Detection` lists with boxes in each frame's own pixels."""
    h, w = size_hw
    results: list[list[Detection]] = []
    for i, shape in enumerate(frame_shapes):
        count = int(outputs["num_detections"][i])
        sx, sy = shape[1] / w, shape[0] / h
        dets = []
        for box, score, label in zip(outputs["boxes"][i, :count], outputs["scores"][i, :count],
                                     outputs["labels"][i, :count]):
            dets.append(Detection(int(label), label_name(int(label), class_names), float(score),
                                  (float(box[0]) * sx, float(box[1]) * sy, float(box[2]) * sx, float(box[3]) * sy)))
        results.append(dets)
    return results
