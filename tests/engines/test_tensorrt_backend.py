"""The daemon's TensorRT backend: frame preparation and result mapping on CPU; clear errors without TensorRT."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from inspector.backends.frames import detections_from_outputs, resize_batch
from inspector.backends import tensorrt as trt_backend
from inspector.backends.base import Detection

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None


def test_resize_batch_stretches_to_input_size_nchw_float() -> None:
    frames = [np.full((40, 80, 3), 7, np.uint8), np.zeros((20, 20, 3), np.uint8)]
    frames[1][:, :, 2] = 200
    batch = resize_batch(frames, (32, 48))
    assert batch.shape == (2, 3, 32, 48) and batch.dtype == np.float32 and batch.flags.c_contiguous
    assert np.all(batch[0] == 7.0)
    assert np.all(batch[1, 2] == 200.0) and np.all(batch[1, :2] == 0.0)  # RGB order kept, channel first


def test_detections_are_mapped_back_per_axis_and_padding_dropped() -> None:
    outputs = {
        "boxes": np.array([[[10, 20, 30, 40], [0, 0, 1, 1]], [[5, 5, 15, 25], [9, 9, 9, 9]]], np.float32),
        "scores": np.array([[0.9, 0.1], [0.8, 0.0]], np.float32),
        "labels": np.array([[1, 0], [0, 0]], np.int64),
        "num_detections": np.array([1, 1], np.int64),
    }
    shapes = [(200, 100, 3), (100, 400, 3)]  # (H, W) of the original frames
    dets = detections_from_outputs(outputs, shapes, (100, 100), ("scratch", "short"))
    assert [len(d) for d in dets] == [1, 1]
    assert dets[0][0] == Detection(1, "short", pytest.approx(0.9), (10.0, 40.0, 30.0, 80.0))
    assert dets[1][0].box == (20.0, 5.0, 60.0, 25.0) and dets[1][0].label == "scratch"


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed: the missing-library path does not apply")
def test_without_tensorrt_the_error_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ImportError, match="onnxruntime"):
        trt_backend.TensorRTBackend(tmp_path)


def test_load_backend_routes_to_tensorrt(tmp_path: Path) -> None:
    from inspector.backends import load_backend

    expected = ImportError if not HAS_TENSORRT else FileNotFoundError
    with pytest.raises(expected):
        load_backend("tensorrt", tmp_path)  # empty dir: no TensorRT here, or no metadata.json there


@pytest.mark.skipif(not HAS_TENSORRT, reason="tensorrt is not installed here")
def test_wrong_target_is_rejected(tmp_path: Path) -> None:
    metadata = {
        "target": "onnxruntime", "model_file": "model.onnx", "class_names": ["a"], "needs_template": False,
        "model_sha256": "0" * 64,
        "preprocessing": {"input_height": 32, "input_width": 32, "pixel_mean": [0, 0, 0], "pixel_std": [1, 1, 1]},
    }
    (tmp_path / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="target is 'onnxruntime'"):
        trt_backend.TensorRTBackend(tmp_path)
