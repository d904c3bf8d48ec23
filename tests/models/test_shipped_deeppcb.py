"""The shipped DeepPCB model (models/deeppcb/): what a station loads is what its README says it is."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "deeppcb"
CLASSES = ["open", "short", "mousebite", "spur", "copper", "pin-hole"]


def test_files_fit_the_budget_and_carry_the_licence() -> None:
    files = [p for p in MODEL.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 25 * 1024 * 1024
    assert "MIT License" in (MODEL / "LICENSE.DeepPCB").read_text()
    readme = (MODEL / "README.md").read_text()
    assert "LICENSE.DeepPCB" in readme and "92000" in readme and "44000" in readme


def test_the_artifact_is_the_checkpoint_compiled() -> None:
    from engines.artifact import ArtifactMetadata
    from training.engine.checkpoint import load_checkpoint, load_model_from_checkpoint

    meta = ArtifactMetadata.load(MODEL / "onnx")
    digest = hashlib.sha256((MODEL / "checkpoint.pt").read_bytes()).hexdigest()
    assert meta.checkpoint_sha256 == digest and list(meta.class_names) == CLASSES
    assert meta.needs_template  # TR-Inter: the station must register templates
    payload = load_checkpoint(MODEL / "checkpoint.pt")
    assert payload["optimizer"] is None  # weights only
    load_model_from_checkpoint(MODEL / "checkpoint.pt")  # strict load into today's model code


def test_the_station_config_runs_it_on_640_px_frames() -> None:
    from inspector.backends import load_backend
    from inspector.config import load_station_config

    cfg = load_station_config(ROOT / "station_configs" / "deeppcb_line.yaml")
    assert cfg.detector.backend == "onnxruntime" and Path(cfg.detector.artifact) == MODEL / "onnx"
    backend = load_backend("onnxruntime", cfg.detector.artifact, intra_op_threads=1)
    try:
        template = np.full((640, 640, 3), 255, np.uint8)
        template[100:540, 300:320] = 0  # a track
        frame = template.copy()
        frame[300:330, 300:320] = 255  # the track cut: an open
        (clean,), (cut,) = backend.detect([template], [template]), backend.detect([frame], [template])
        assert not [d for d in clean if d.score >= 0.5]  # the template against itself: nothing to report
        best = max(cut, key=lambda d: d.score)  # boxes in the frame's own 640 px coordinates
        x1, y1, x2, y2 = best.box
        assert best.label == "open" and best.score >= 0.5 and x1 <= 310 <= x2 and y1 <= 315 <= y2, cut
    finally:
        backend.close()
