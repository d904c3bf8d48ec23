"""Frames <-> graph, the one definition every artifact backend (ONNX Runtime, OpenVINO, TensorRT) shares.

``engines/artifact.py`` fixes the convention: resizing is outside the graph (frames are stretched to the input
size with OpenCV, no letterbox), boxes come back in input pixels and are scaled back per axis, labels are 0-based
indices into ``class_names``, and outputs are padded to a fixed count with ``num_detections`` saying how many are
real. Two copies of this drifted once a backend changed; one module keeps the backends' results identical.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from engines.artifact import resize_batch  # the contract's preprocessing, shared with the INT8 calibrator
from inspector.backends.base import Detection

OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")
__all__ = ["OUTPUT_NAMES", "detections_from_outputs", "label_name", "resize_batch"]


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
