"""Accuracy of a compiled artifact, run exactly as the daemon runs it.

The frames go through the daemon's own backend (``inspector.backends``: the runtime the station config names,
the artifact's preprocessing, its box mapping), so the figure is that of the artifact on the line, not of the
checkpoint it came from. Ground truth and predictions are compared in each image's native pixels: the artifact's
stretch resize is a per-axis scaling, which leaves IoU, and therefore every metric, unchanged.

``backend`` picks the runtime (default: the one the artifact's target names; an ``onnxruntime`` artifact also
runs on ``openvino``). Used by ``rddn compile --precision int8`` for the accuracy recorded in metadata.json.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

#: The backend that runs each artifact target by default.
DEFAULT_BACKEND = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt"}


def evaluate_artifact(artifact_dir: Path | str, data_cfg: Any, *, backend: str | None = None,
                      backend_options: Mapping[str, Any] | None = None, limit: int | None = None) -> dict[str, Any]:
    """Run the artifact over the evaluation side of ``data_cfg``; returns ``training.evaluation.evaluate``'s
    metrics plus ``backend``, ``precision``, ``seconds`` and ``images_per_second``."""
    from engines.artifact import ArtifactMetadata
    from inspector.backends import load_backend
    from training.data.dataset import build_reader
    from training.evaluation import evaluate

    metadata = ArtifactMetadata.load(Path(artifact_dir))
    kind = backend or DEFAULT_BACKEND[metadata.target]
    reader = build_reader(data_cfg, train=False)
    if tuple(reader.class_names) != tuple(metadata.class_names):
        raise ValueError(f"the artifact's classes {list(metadata.class_names)} differ from the dataset's "
                         f"{list(reader.class_names)}")
    if limit is not None:
        reader.records = reader.records[:limit]
    runner = load_backend(kind, artifact_dir, **dict(backend_options or {}))
    preds: list[dict[str, np.ndarray]] = []
    gts: list[dict[str, np.ndarray]] = []
    start = time.perf_counter()
    try:
        for sample in reader:
            if runner.needs_template and sample.template is None:
                raise ValueError(f"{sample.path}: the artifact needs a template, the dataset has none")
            (dets,) = runner.detect([sample.image], [sample.template])
            preds.append({
                "boxes": np.asarray([d.box for d in dets], np.float32).reshape(-1, 4),
                "scores": np.asarray([d.score for d in dets], np.float32),
                "labels": np.asarray([d.class_id + 1 for d in dets], np.int64),  # metrics take 1..C
            })
            gts.append({"boxes": sample.boxes, "labels": sample.labels})
    finally:
        runner.close()
    seconds = time.perf_counter() - start
    if not gts:
        raise ValueError("the evaluation side of the data has no loadable images")
    result = evaluate(preds, gts, metadata.class_names)
    result.update(backend=kind, precision=metadata.precision, target=metadata.target, seconds=seconds,
                  images_per_second=len(gts) / seconds if seconds > 0 else float("nan"))
    return result
