"""The deployable artifact's contract: ``<dir>/metadata.json`` next to the model file(s).

Written by ``rddn compile`` (engines side), read by the daemon's backends (inspector side). Pure pydantic, no
torch: this module is the only piece of ``engines`` the daemon imports.

Graph I/O contract of every artifact (ONNX for ONNX Runtime, IR ``model.xml``/``model.bin`` for OpenVINO,
ONNX/engine for TensorRT):
- inputs: ``image`` float32 [N, 3, H, W], RGB, 0..255, already resized to ``preprocessing.input_height/width``;
  ``template`` of the same shape when ``needs_template`` (or TR-Post is compiled in).
- outputs: ``boxes`` float32 [N, D, 4] (x1, y1, x2, y2 in input pixels), ``scores`` float32 [N, D],
  ``labels`` int64 [N, D] (0-based index into ``class_names``), ``num_detections`` int64 [N]; rows past
  ``num_detections`` are padding. D = ``max_detections``.
Normalisation (mean/std or TR-Pre) and post-processing (NMS, score filter, top-D) are inside the graph.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def artifact_relative(value: str | None) -> str | None:
    """A file name inside the artifact directory: relative, no ``..``, no backslash. ``metadata.json`` comes with
    the artifact, so a crafted one must not point the backend at a file elsewhere on the machine."""
    if value is None:
        return None
    parts = value.split("/")
    if not value or value.startswith("/") or "\\" in value or "\0" in value or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"{value!r} must be a file name inside the artifact directory (relative, no '..')")
    return value


class Preprocessing(_Strict):
    """How a frame becomes the graph's input. Resizing is outside the graph (the daemon does it with OpenCV)."""

    input_height: int = Field(gt=0)
    input_width: int = Field(gt=0)
    resize: Literal["stretch"] = "stretch"  # resize to exactly (H, W); boxes are scaled back per axis
    color: Literal["RGB"] = "RGB"
    normalization: Literal["mean_std", "tr_pre"] = "mean_std"  # done inside the graph; recorded for humans
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]


class TensorRTInfo(_Strict):
    version: str
    gpu_arch: str  # e.g. "sm_90"
    build_flags: list[str] = []
    plugin_library: str | None = None  # PTX / shared object shipped next to the engine

    @field_validator("plugin_library")
    @classmethod
    def _inside_artifact(cls, value: str | None) -> str | None:
        return artifact_relative(value)


class OpenVINOInfo(_Strict):
    """The OpenVINO IR of a ``target: openvino`` artifact: ``model_file`` is the ``.xml``, this the weights."""

    version: str  # openvino that converted it
    weights_file: str  # the IR's .bin, relative to the artifact directory
    weights_sha256: str


class CalibrationSet(_Strict):
    """The frames an INT8 artifact was calibrated on: training pairs only, never the validation groups."""

    source: str  # dataset root / data config it was drawn from
    split: str  # which side of it ("train": the held-out validation groups excluded)
    excluded_groups: list[str] = []  # board groups kept out (the validation groups)
    count: int = Field(gt=0)  # image pairs fed to the calibrator
    list_sha256: str  # sha256 over the sorted relative paths of those pairs (reproducible identity of the set)
    seed: int = 0  # the draw of ``count`` pairs from the split


class Quantization(_Strict):
    """How an INT8 artifact was made: quantiser, scheme, what stayed in FP32."""

    tool: str  # e.g. "onnxruntime.quantization 1.32.0" or "nncf 3.4.0"
    method: str  # calibration statistic: minmax / percentile / entropy ...
    format: str  # QDQ (ONNX) / FakeQuantize (OpenVINO IR)
    activations: str  # e.g. "uint8 per-tensor asymmetric"
    weights: str  # e.g. "int8 per-channel symmetric"
    quantized_ops: list[str]  # op types quantised
    fp32_scopes: list[str] = []  # model parts deliberately left in FP32 (e.g. "roi_heads", "rpn")
    calibration: CalibrationSet


class Accuracy(_Strict):
    """The artifact's own accuracy, measured by running exactly this artifact at compile time."""

    dataset: str  # what it was measured on (root + split/groups)
    images: int = Field(ge=0)
    map50: float
    reference_map50: float | None = None  # the FP32 PyTorch checkpoint on the same images, same protocol
    runtime: str  # backend that ran the artifact (onnxruntime / openvino)
    measured: str | None = None  # UTC timestamp


class ArtifactMetadata(_Strict):
    format_version: int = FORMAT_VERSION
    target: Literal["onnxruntime", "openvino", "tensorrt"]
    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    model_file: str  # relative to the artifact directory
    onnx_file: str | None = None  # for TensorRT: the ONNX the engine is (re)built from
    class_names: list[str]
    preprocessing: Preprocessing
    needs_template: bool
    tr_post: bool = False
    score_thresh: float = 0.01
    nms_thresh: float = 0.5
    max_detections: int = 100
    model_sha256: str
    checkpoint_sha256: str | None = None
    architecture: str = "faster"
    reference: dict[str, object] = {}
    exporter_versions: dict[str, str] = {}
    tensorrt: TensorRTInfo | None = None
    openvino: OpenVINOInfo | None = None
    quantization: Quantization | None = None  # INT8 artifacts: quantiser, scheme, calibration set
    accuracy: Accuracy | None = None  # measured on the validation split when compiled with validation data
    created: str | None = None

    @field_validator("model_file", "onnx_file")
    @classmethod
    def _inside_artifact(cls, value: str | None) -> str | None:
        return artifact_relative(value)

    def referenced_files(self) -> list[str]:
        """Every file of the artifact this metadata points a backend at."""
        refs = [self.model_file, self.onnx_file, self.tensorrt.plugin_library if self.tensorrt else None]
        return list(dict.fromkeys(r for r in refs if r))

    @staticmethod
    def file_path(artifact_dir: Path, name: str) -> Path:
        """``artifact_dir / name``, refused when a symbolic link takes it outside the artifact directory."""
        root = Path(artifact_dir).resolve()
        path = (root / name).resolve()
        if not path.is_relative_to(root):
            raise ValueError(f"{Path(artifact_dir) / name}: resolves to {path}, outside the artifact directory")
        return path

    @classmethod
    def load(cls, artifact_dir: Path) -> "ArtifactMetadata":
        path = Path(artifact_dir) / METADATA_FILE
        if not path.is_file():
            raise FileNotFoundError(f"artifact metadata not found: {path}")
        try:
            return cls.model_validate_json(path.read_text())
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"{path}: invalid artifact metadata: {problems}") from None

    def save(self, artifact_dir: Path) -> Path:
        path = Path(artifact_dir) / METADATA_FILE
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2) + "\n")
        return path


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Content hash used for model identity in metadata and in the results database."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def resize_batch(frames: Sequence[np.ndarray], size_hw: tuple[int, int]) -> np.ndarray:
    """HxWx3 uint8 RGB frames -> float32 [N, 3, H, W] at the graph's input size (``resize: stretch``).

    The one definition of the artifact's preprocessing: the daemon's backends feed graphs through it, and the
    INT8 calibrator feeds the calibration frames through it, so the quantiser sees exactly what the line sees.
    Frames already at the input size are not resampled (bit-exact pixels for a station that matches the graph)."""
    import cv2

    h, w = size_hw
    batch = [f if f.shape[:2] == (h, w) else cv2.resize(f, (w, h), interpolation=cv2.INTER_LINEAR) for f in frames]
    return np.ascontiguousarray(np.stack(batch).transpose(0, 3, 1, 2), dtype=np.float32)
