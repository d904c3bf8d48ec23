"""The deployable artifact's contract: ``<dir>/metadata.json`` next to the model file(s).

Written by ``rddn compile`` (engines side), read by the daemon's backends (inspector side). Pure pydantic, no
torch: this module is the only piece of ``engines`` the daemon imports.

Graph I/O contract of every artifact (ONNX for ONNX Runtime, ONNX/engine for TensorRT):
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
from typing import Literal

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


class ArtifactMetadata(_Strict):
    format_version: int = FORMAT_VERSION
    target: Literal["onnxruntime", "tensorrt"]
    precision: Literal["fp32", "fp16"] = "fp32"
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
