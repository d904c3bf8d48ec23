"""Detection backends behind one small interface (see ``base``); heavy libraries are imported lazily so the
daemon's base install (no torch, no TensorRT, no OpenVINO) can load whichever backend the station uses."""
from __future__ import annotations

import importlib.metadata
from pathlib import Path

from inspector.backends.base import Detection, DetectorBackend

BACKENDS = ("onnxruntime", "openvino", "tensorrt", "torch", "difference")
#: The Python distribution each backend runs on (``difference`` needs only OpenCV, always installed).
RUNTIMES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt", "torch": "torch"}


def installed_runtimes() -> dict[str, str | None]:
    """Backend -> version of its runtime distribution, None where it is not installed (nothing is imported)."""
    versions: dict[str, str | None] = {}
    for backend, dist in RUNTIMES.items():
        try:
            versions[backend] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[backend] = None
    return versions


def load_backend(kind: str, artifact_path: Path | str | None = None, **options: object) -> DetectorBackend:
    """Build the backend ``kind`` for ``artifact_path`` (artifact dir, or checkpoint file for ``torch``).

    ``options`` go to the backend constructor (e.g. ``threshold`` for difference, ``providers`` for ORT)."""
    if kind == "difference":
        from inspector.backends.difference import DifferenceBackend

        return DifferenceBackend(**options)  # type: ignore[arg-type]
    if artifact_path is None:
        raise ValueError(f"backend '{kind}' needs an artifact path")
    if kind == "onnxruntime":
        from inspector.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(artifact_path, **options)  # type: ignore[arg-type]
    if kind == "openvino":
        from inspector.backends.openvino import OpenVINOBackend

        return OpenVINOBackend(artifact_path, **options)  # type: ignore[arg-type]
    if kind == "torch":
        from inspector.backends.torch_checkpoint import TorchCheckpointBackend

        return TorchCheckpointBackend(artifact_path, **options)  # type: ignore[arg-type]
    if kind == "tensorrt":
        from inspector.backends import tensorrt  # written by the kernels engineer

        backend_cls = getattr(tensorrt, "TensorRTBackend")
        return backend_cls(artifact_path, **options)
    raise ValueError(f"unknown backend '{kind}' (choose one of {', '.join(BACKENDS)})")


__all__ = ["BACKENDS", "RUNTIMES", "Detection", "DetectorBackend", "installed_runtimes", "load_backend"]
