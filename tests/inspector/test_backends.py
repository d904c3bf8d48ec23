"""Backends on real runtimes: the difference detector, ONNX Runtime and OpenVINO on a tiny graph built here that
satisfies the artifact I/O contract (engines/artifact.py), and the torch checkpoint backend on a tiny real RDDN.
Every artifact-contract test runs on both CPU runtimes: they must give the same detections from one artifact."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading
from pathlib import Path

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


CPU_RUNTIMES = ("onnxruntime", "openvino")


@pytest.mark.parametrize("runtime", CPU_RUNTIMES)
def test_cpu_backends_follow_the_artifact_contract(tmp_path, tiny_artifact, runtime):
    backend = load_backend(runtime, tiny_artifact(tmp_path / "plain", with_template=False))
    assert backend.class_names == ("scratch", "short") and not backend.needs_template
    white = np.full((48, 64, 3), 255, np.uint8)
    grey = np.full((96, 32, 3), 51, np.uint8)
    out = backend.detect([white, grey], [None, None])
    assert [len(d) for d in out] == [1, 1]  # padding rows past num_detections are dropped
    det = out[0][0]
    assert det.label == "short" and det.class_id == 1 and det.score == pytest.approx(1.0)
    assert det.box == pytest.approx((4.0, 6.0, 20.0, 12.0))  # (2,4,10,8) in 32x32 mapped back to 64x48
    assert out[1][0].score == pytest.approx(0.2, abs=1e-3) and out[1][0].box == pytest.approx((2, 12, 10, 24))


@pytest.mark.parametrize("runtime", CPU_RUNTIMES)
def test_artifact_backends_share_one_frame_helper(monkeypatch, tmp_path, tiny_artifact, runtime):
    """ONNX Runtime, OpenVINO and TensorRT map frames <-> graph through ``inspector.backends.frames`` only (the
    CPU runtimes through their shared ``GraphBackend``): a change there (e.g. letterboxing) reaches all of
    them, so the backends cannot drift apart."""
    from engines import artifact
    from inspector.backends import frames, graph, onnxruntime, openvino, tensorrt

    assert frames.resize_batch is artifact.resize_batch  # the calibrator feeds INT8 frames through the same one
    for module in (graph, tensorrt):
        assert module.resize_batch is frames.resize_batch
        assert module.detections_from_outputs is frames.detections_from_outputs
    for cls in (onnxruntime.OnnxRuntimeBackend, openvino.OpenVINOBackend):
        assert issubclass(cls, graph.GraphBackend) and cls.detect is graph.GraphBackend.detect
    calls: list[tuple[int, int]] = []
    real = frames.resize_batch
    monkeypatch.setattr(graph, "resize_batch", lambda f, size: calls.append(size) or real(f, size))
    backend = load_backend(runtime, tiny_artifact(tmp_path / "plain", with_template=False))
    backend.detect([np.zeros((48, 64, 3), np.uint8)], [None])
    assert calls == [(32, 32)]  # (height, width) of the graph input, as frames.resize_batch takes it


@pytest.mark.parametrize("runtime", CPU_RUNTIMES)
def test_cpu_backends_feed_the_template(tmp_path, tiny_artifact, runtime):
    backend = load_backend(runtime, tiny_artifact(tmp_path / "tr", with_template=True))
    assert backend.needs_template
    white, black = np.full((32, 32, 3), 255, np.uint8), np.zeros((32, 32, 3), np.uint8)
    ((same,),), ((diff,),) = backend.detect([white], [white]), backend.detect([white], [black])
    assert same.score == pytest.approx(0.0) and diff.score == pytest.approx(1.0)
    with pytest.raises(ValueError, match="needs a template"):
        backend.detect([white], [None])


@pytest.mark.parametrize("runtime", CPU_RUNTIMES)
def test_cpu_backends_reject_bad_artifacts(tmp_path, tiny_artifact, runtime):
    art = tiny_artifact(tmp_path / "a", with_template=False)
    (art / "model.onnx").write_bytes((art / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(ValueError, match="sha256"):
        load_backend(runtime, art)
    with pytest.raises(FileNotFoundError, match="metadata"):
        load_backend(runtime, tmp_path / "nowhere")
    art2 = tiny_artifact(tmp_path / "b", with_template=False)
    meta = ArtifactMetadata.load(art2)
    meta.model_copy(update={"needs_template": True}).save(art2)
    with pytest.raises(ValueError, match="graph inputs"):
        load_backend(runtime, art2)
    meta.model_copy(update={"model_file": "../b/model.onnx"}).save(art2)
    with pytest.raises(ValueError, match="outside the artifact|inside the artifact directory"):
        load_backend(runtime, art2)
    meta.model_copy(update={"target": "tensorrt"}).save(art2)
    with pytest.raises(ValueError, match="target is 'tensorrt'"):
        load_backend(runtime, art2)
    with pytest.raises(ValueError, match="unknown backend"):
        load_backend("magic", art2)


@pytest.mark.parametrize("runtime", CPU_RUNTIMES)
def test_static_batch_graph_takes_any_number_of_frames(tmp_path, tiny_artifact, runtime):
    """Exported graphs have a static batch (1 by default): three frames run as three graph runs, each frame
    keeping its own result and its own box mapping."""
    backend = load_backend(runtime, tiny_artifact(tmp_path / "b1", with_template=False, batch=1))
    assert backend.batch_size == 1
    frames = [np.full((32, 32, 3), 255, np.uint8), np.full((64, 32, 3), 51, np.uint8), np.zeros((32, 64, 3), np.uint8)]
    out = backend.detect(frames, [None] * 3)
    assert [d[0].score for d in out] == pytest.approx([1.0, 0.2, 0.0], abs=1e-3)
    assert out[1][0].box == pytest.approx((2, 8, 10, 16)) and out[2][0].box == pytest.approx((4, 4, 20, 8))
    dynamic = load_backend(runtime, tiny_artifact(tmp_path / "bn", with_template=False))
    assert dynamic.batch_size is None
    assert [[d.score for d in r] for r in dynamic.detect(frames, [None] * 3)] == [[d.score for d in r] for r in out]


def test_openvino_backend_runs_an_ir_artifact(tmp_path, tiny_artifact):
    """``target: openvino``: the IR (.xml + .bin) written by engines.openvino_ir, both files hash-checked, and
    the same detections as the ONNX Runtime backend on the ONNX it was converted from."""
    from engines.openvino_ir import convert_to_ir

    onnx_art = tiny_artifact(tmp_path / "onnx", with_template=True)
    ir_dir = tmp_path / "ir"
    ir_dir.mkdir()
    info = convert_to_ir(onnx_art / "model.onnx", ir_dir / "model.xml")
    from engines.artifact import sha256_file

    ArtifactMetadata.load(onnx_art).model_copy(update={
        "target": "openvino", "model_file": "model.xml", "model_sha256": sha256_file(ir_dir / "model.xml"),
        "openvino": info}).save(ir_dir)
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 255, (40, 56, 3), dtype=np.uint8) for _ in range(2)]
    templates = [rng.integers(0, 255, (40, 56, 3), dtype=np.uint8) for _ in range(2)]
    ir = load_backend("openvino", ir_dir)
    reference = load_backend("onnxruntime", onnx_art)
    for got, want in zip(ir.detect(frames, templates), reference.detect(frames, templates)):
        assert [(d.label, d.box) for d in got] == [(d.label, d.box) for d in want]
        assert [d.score for d in got] == pytest.approx([d.score for d in want], abs=1e-6)
    weights = ir_dir / info.weights_file
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\1")
    with pytest.raises(ValueError, match="weights_sha256"):
        load_backend("openvino", ir_dir)
    ArtifactMetadata.load(ir_dir).model_copy(update={"openvino": None}).save(ir_dir)
    with pytest.raises(ValueError, match="without an 'openvino' section"):
        load_backend("openvino", ir_dir)


def test_openvino_backend_is_safe_to_call_from_analysis_threads(tmp_path, tiny_artifact):
    """The pipeline runs several analysis workers: concurrent detect calls each get their own infer request
    and their own frame's result (a shared request would hand one thread another's outputs)."""
    backend = load_backend("openvino", tiny_artifact(tmp_path / "tr", with_template=True))
    assert backend.thread_safe
    levels = [0, 51, 102, 153, 204, 255]
    results: dict[int, list[float]] = {}
    errors: list[BaseException] = []

    def work(level: int) -> None:
        try:
            image = np.full((32, 32, 3), level, np.uint8)
            results[level] = [backend.detect([image], [np.zeros_like(image)])[0][0].score for _ in range(20)]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(level,)) for level in levels]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    for level in levels:
        assert results[level] == pytest.approx([level / 255] * 20, abs=1e-5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sigaltstack via the C library: Linux")
def test_openvino_reload_and_close_on_another_thread_keep_signals_safe(tmp_path, tiny_artifact):
    """A reload (new backend compiled before the old one is closed) and a close on another thread leave every
    thread's alternate signal stack as it was, so a signal with a Python handler (the daemon's SIGHUP/SIGTERM)
    is still handled. Without engines.openvino_ir.signal_stack_kept, OpenVINO's CPU plugin leaves the thread's
    stack on a buffer it has freed and the process dies of SIGSEGV at the next signal: run in a child process,
    with faulthandler on as in the daemon's tests and under pytest."""
    art = tiny_artifact(tmp_path / "a", with_template=True)
    code = f"""
import os, signal, sys, threading
import numpy as np
from engines.openvino_ir import signal_stack
from inspector.backends import load_backend
image = np.full((32, 32, 3), 255, np.uint8)
before = signal_stack()
old = load_backend("openvino", {str(art)!r})
old.detect([image], [image])
new = load_backend("openvino", {str(art)!r})  # a reload: the new backend first
old.close()
assert signal_stack() == before, ("after the reload", signal_stack(), before)
closer = threading.Thread(target=new.close)
closer.start(); closer.join()
assert signal_stack() == before, ("after a close on another thread", signal_stack(), before)
signal.signal(signal.SIGUSR1, lambda *_: print("handled", flush=True))
os.kill(os.getpid(), signal.SIGUSR1)
print("alive", flush=True)
"""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code], cwd=root, capture_output=True,
                         text=True, timeout=120)
    assert (out.returncode, out.stdout.split()) == (0, ["handled", "alive"]), (out.returncode, out.stderr[-2000:])


def test_cpu_backends_import_and_run_without_torch(tmp_path, tiny_artifact):
    """The daemon's base install has no torch: both CPU backends import and run with torch unimportable."""
    art = tiny_artifact(tmp_path / "a", with_template=True)
    code = f"""
import importlib.abc, sys
class NoTorch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith(("torch.", "torchvision")):
            raise ImportError("torch is hidden in this test")
sys.meta_path.insert(0, NoTorch())
import numpy as np
from inspector.backends import load_backend
for runtime in ("onnxruntime", "openvino"):
    backend = load_backend(runtime, {str(art)!r})
    image = np.full((32, 32, 3), 255, np.uint8)
    (dets,) = backend.detect([image], [np.zeros_like(image)])
    assert abs(dets[0].score - 1.0) < 1e-5, dets
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules), "torch was imported"
print("ok")
"""
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


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


@pytest.mark.parametrize("runtime", CPU_RUNTIMES)
def test_tr_post_artifact_needs_templates_in_the_daemon(tmp_path, tiny_artifact, runtime):
    """TR-Post compiled in: without a real template every score would collapse, so the frame must wait for (or
    be quarantined without) a template rather than run blind."""
    art = tiny_artifact(tmp_path / "trpost", with_template=True)
    ArtifactMetadata.load(art).model_copy(update={"needs_template": False, "tr_post": True}).save(art)
    backend = load_backend(runtime, art)
    assert backend.needs_template
    with pytest.raises(ValueError, match="needs a template"):
        backend.detect([np.zeros((32, 32, 3), np.uint8)], [None])
