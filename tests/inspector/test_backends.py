"""Backends on real runtimes: the difference detector, ONNX Runtime on a tiny graph built here that satisfies
the artifact I/O contract (engines/artifact.py), and the torch checkpoint backend on a tiny real RDDN."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from engines.artifact import ArtifactMetadata
from inspector.backends import load_backend
from inspector.backends.difference import DifferenceBackend


def test_difference_backend_finds_changes_only():
    rng = np.random.default_rng(0)
    template = rng.integers(0, 60, (96, 128, 3), dtype=np.uint8)
    image = template.copy()
    image[40:52, 60:80] = 250
    backend = load_backend("difference")
    (found,), (none,) = backend.detect([image], [template]), backend.detect([template], [template])
    assert none == []
    assert len(found) == 1 and found[0].label == "defect" and 0.5 < found[0].score <= 1.0
    x1, y1, x2, y2 = found[0].box
    assert abs(x1 - 60) <= 2 and abs(y1 - 40) <= 2 and abs(x2 - 80) <= 2 and abs(y2 - 52) <= 2
    with pytest.raises(ValueError, match="needs a template"):
        DifferenceBackend().detect([image], [None])


def test_onnxruntime_backend_follows_the_artifact_contract(tmp_path, tiny_artifact):
    backend = load_backend("onnxruntime", tiny_artifact(tmp_path / "plain", with_template=False))
    assert backend.class_names == ("scratch", "short") and not backend.needs_template
    white = np.full((48, 64, 3), 255, np.uint8)
    grey = np.full((96, 32, 3), 51, np.uint8)
    out = backend.detect([white, grey], [None, None])
    assert [len(d) for d in out] == [1, 1]  # padding rows past num_detections are dropped
    det = out[0][0]
    assert det.label == "short" and det.class_id == 1 and det.score == pytest.approx(1.0)
    assert det.box == pytest.approx((4.0, 6.0, 20.0, 12.0))  # (2,4,10,8) in 32x32 mapped back to 64x48
    assert out[1][0].score == pytest.approx(0.2, abs=1e-3) and out[1][0].box == pytest.approx((2, 12, 10, 24))


def test_artifact_backends_share_one_frame_helper(monkeypatch, tmp_path, tiny_artifact):
    """ONNX Runtime and TensorRT map frames <-> graph through ``inspector.backends.frames`` only: a change there
    (e.g. letterboxing) reaches both, so the two backends cannot drift apart."""
    from inspector.backends import frames, onnxruntime, tensorrt

    for module in (onnxruntime, tensorrt):
        assert module.resize_batch is frames.resize_batch
        assert module.detections_from_outputs is frames.detections_from_outputs
    assert not hasattr(onnxruntime.OnnxRuntimeBackend, "_prepare")
    calls: list[tuple[int, int]] = []
    real = frames.resize_batch
    monkeypatch.setattr(onnxruntime, "resize_batch", lambda f, size: calls.append(size) or real(f, size))
    backend = load_backend("onnxruntime", tiny_artifact(tmp_path / "plain", with_template=False))
    backend.detect([np.zeros((48, 64, 3), np.uint8)], [None])
    assert calls == [(32, 32)]  # (height, width) of the graph input, as frames.resize_batch takes it


def test_onnxruntime_backend_feeds_the_template(tmp_path, tiny_artifact):
    backend = load_backend("onnxruntime", tiny_artifact(tmp_path / "tr", with_template=True))
    assert backend.needs_template
    white, black = np.full((32, 32, 3), 255, np.uint8), np.zeros((32, 32, 3), np.uint8)
    ((same,),), ((diff,),) = backend.detect([white], [white]), backend.detect([white], [black])
    assert same.score == pytest.approx(0.0) and diff.score == pytest.approx(1.0)
    with pytest.raises(ValueError, match="needs a template"):
        backend.detect([white], [None])


def test_onnxruntime_backend_rejects_bad_artifacts(tmp_path, tiny_artifact):
    art = tiny_artifact(tmp_path / "a", with_template=False)
    (art / "model.onnx").write_bytes((art / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(ValueError, match="sha256"):
        load_backend("onnxruntime", art)
    with pytest.raises(FileNotFoundError, match="metadata"):
        load_backend("onnxruntime", tmp_path / "nowhere")
    art2 = tiny_artifact(tmp_path / "b", with_template=False)
    meta = ArtifactMetadata.load(art2)
    meta.model_copy(update={"needs_template": True}).save(art2)
    with pytest.raises(ValueError, match="graph inputs"):
        load_backend("onnxruntime", art2)
    with pytest.raises(ValueError, match="unknown backend"):
        load_backend("magic", art2)


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed (daemon base install)")
def test_torch_checkpoint_backend_runs_a_tiny_rddn(tmp_path):
    import torch

    torch.set_num_threads(1)
    from training.engine.checkpoint import save_checkpoint
    from training.model import build_model
    from training.model.config import BackboneConfig, FPNConfig, ModelConfig, ReferenceConfig, RoIHeadConfig

    torch.manual_seed(0)
    cfg = ModelConfig(class_names=("spot", "open"), backbone=BackboneConfig(depth=18, width=8, norm="gn"),
                      fpn=FPNConfig(out_channels=16), roi_head=RoIHeadConfig(representation_size=32, score_thresh=0.0),
                      reference=ReferenceConfig(input="tr_pre"))
    path = save_checkpoint(tmp_path / "tiny.pt", build_model(cfg).eval())
    backend = load_backend("torch", path)
    assert backend.needs_template and backend.class_names == ("spot", "open")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)
    (dets,) = backend.detect([image], [image[::-1].copy()])
    assert len(dets) <= 100
    for d in dets:
        assert d.label in ("spot", "open") and 0.0 <= d.score <= 1.0
        assert 0 <= d.box[0] <= d.box[2] <= 70 and 0 <= d.box[1] <= d.box[3] <= 50  # clipped to the frame
    with pytest.raises(ValueError, match="needs a template"):
        backend.detect([image], [None])


def test_tr_post_artifact_needs_templates_in_the_daemon(tmp_path, tiny_artifact):
    """TR-Post compiled in: without a real template every score would collapse, so the frame must wait for (or
    be quarantined without) a template rather than run blind."""
    art = tiny_artifact(tmp_path / "trpost", with_template=True)
    ArtifactMetadata.load(art).model_copy(update={"needs_template": False, "tr_post": True}).save(art)
    backend = load_backend("onnxruntime", art)
    assert backend.needs_template
    with pytest.raises(ValueError, match="needs a template"):
        backend.detect([np.zeros((32, 32, 3), np.uint8)], [None])
