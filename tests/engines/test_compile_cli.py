"""``rddn compile`` end to end: checkpoint -> artifact directory that the daemon's ONNX Runtime backend loads.

Also: the TensorRT target without TensorRT on the machine writes the TensorRT-variant ONNX + metadata and says
the engine is built on the target; bad options fail with a message naming the option or file.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from engines import compile as cc
from engines.artifact import ArtifactMetadata, sha256_file
from engines.onnx_graph import op_counts
from training.engine.checkpoint import save_checkpoint
from training.model import build_model
from training.model.config import ModelConfig

torch.set_num_threads(1)
CLASSES = ["scratch", "dent"]


def _checkpoint(tmp_path: Path, **overrides) -> Path:
    config = ModelConfig.model_validate({
        "class_names": CLASSES,
        "backbone": {"depth": 18, "width": 16},
        "fpn": {"out_channels": 32},
        "rpn": {"pre_nms_top_n_test": 200, "post_nms_top_n_test": 100},
        "roi_head": {"representation_size": 64},
        **overrides,
    })
    torch.manual_seed(0)
    model = build_model(config).eval()
    with torch.no_grad():
        model.roi_heads.stages[0].box_predictor.cls_score.weight.normal_(0.0, 0.3)
    return save_checkpoint(tmp_path / "model.pt", model, epoch=3, iteration=120,
                           train_config={"data": {"input_size": [96, 128]}})


def test_compile_writes_an_artifact_the_daemon_backend_runs(tmp_path: Path, capsys) -> None:
    from inspector.backends.onnxruntime import OnnxRuntimeBackend

    ckpt = _checkpoint(tmp_path, reference={"input": "tr_pre"}, context={"enabled": True})
    out = tmp_path / "artifact"
    status = cc.main(["--checkpoint", str(ckpt), "--target", "onnxruntime", "--test-proposals", "50",
                      "--out", str(out)])
    assert status == 0
    log = capsys.readouterr().err
    assert "[compile 1/5] loading checkpoint" in log and "self-check" in log and "20 matched" in log

    meta = ArtifactMetadata.load(out)
    assert meta.target == "onnxruntime" and meta.precision == "fp32" and meta.model_file == "model.onnx"
    assert meta.class_names == CLASSES and meta.needs_template and not meta.tr_post
    # the size recorded in the checkpoint's train_config is the graph's input size
    assert (meta.preprocessing.input_height, meta.preprocessing.input_width) == (96, 128)
    assert meta.preprocessing.normalization == "tr_pre"
    assert meta.model_sha256 == sha256_file(out / "model.onnx")
    assert meta.checkpoint_sha256 == sha256_file(ckpt)
    assert meta.reference["test_proposals"] == 50 and meta.reference["context"]["enabled"] is True
    assert {"torch", "onnx", "onnxruntime"} <= set(meta.exporter_versions)
    assert meta.tensorrt is None
    json.loads((out / "metadata.json").read_text())  # plain JSON for humans and tools

    backend = OnnxRuntimeBackend(out)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (150, 200, 3), dtype=np.uint8)  # native size != graph size: backend resizes
    template = np.clip(frame.astype(np.int16) + rng.integers(-60, 60, frame.shape), 0, 255).astype(np.uint8)
    results = backend.detect([frame], [template])
    assert len(results) == 1 and len(results[0]) > 0
    for det in results[0]:
        assert det.label in CLASSES and det.score > meta.score_thresh
        x1, y1, x2, y2 = det.box
        assert 0 <= x1 <= x2 <= 200 and 0 <= y1 <= y2 <= 150  # mapped back to the frame's pixels
    backend.close()


def test_openvino_target_writes_an_fp32_ir_the_openvino_backend_runs(tmp_path: Path, capsys) -> None:
    """``--target openvino``: model.xml + model.bin (FP32 weights, both hashed), checked against PyTorch in
    OpenVINO at compile time, and the daemon's openvino backend gives the ONNX Runtime artifact's detections."""
    from inspector.backends import load_backend

    ckpt = _checkpoint(tmp_path, reference={"feature": "tr_inter"}, context={"enabled": True})
    ov_dir, ort_dir = tmp_path / "ov", tmp_path / "ort"
    assert cc.main(["--checkpoint", str(ckpt), "--target", "openvino", "--test-proposals", "50",
                    "--out", str(ov_dir)]) == 0
    log = capsys.readouterr().err
    assert "self-check: OpenVINO IR vs PyTorch" in log and log.count("20 matched") == 2  # ONNX, then the IR
    meta = ArtifactMetadata.load(ov_dir)
    assert meta.target == "openvino" and meta.precision == "fp32" and meta.model_file == "model.xml"
    assert meta.openvino is not None and meta.openvino.weights_file == "model.bin"
    assert meta.model_sha256 == sha256_file(ov_dir / "model.xml")
    assert meta.openvino.weights_sha256 == sha256_file(ov_dir / "model.bin")
    assert meta.onnx_file is None and not (ov_dir / "model.onnx").exists() and "openvino" in meta.exporter_versions
    xml = (ov_dir / "model.xml").read_text()
    assert 'element_type="f32"' in xml and 'element_type="f16"' not in xml  # weights not halved on save
    assert cc.main(["--checkpoint", str(ckpt), "--target", "onnxruntime", "--test-proposals", "50", "--no-verify",
                    "--out", str(ort_dir)]) == 0
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 255, (150, 200, 3), dtype=np.uint8)
    template = np.clip(frame.astype(np.int16) + rng.integers(-60, 60, frame.shape), 0, 255).astype(np.uint8)
    (got,), (want,) = (load_backend(kind, d).detect([frame], [template])
                       for kind, d in (("openvino", ov_dir), ("onnxruntime", ort_dir)))
    assert len(want) > 0 and [d.label for d in got] == [d.label for d in want]
    assert np.allclose([d.box for d in got], [d.box for d in want], atol=1e-3)
    assert np.allclose([d.score for d in got], [d.score for d in want], atol=1e-5)


def test_rddn_cli_delegates_compile(tmp_path: Path) -> None:
    from training.cli import main

    ckpt = _checkpoint(tmp_path)
    out = tmp_path / "artifact"
    status = main(["compile", "--checkpoint", str(ckpt), "--target", "onnxruntime", "--input-size", "64", "96",
                   "--tr-post", "--no-verify", "--out", str(out)])
    assert status == 0
    meta = ArtifactMetadata.load(out)
    assert (meta.preprocessing.input_height, meta.preprocessing.input_width) == (64, 96)
    assert meta.tr_post and meta.needs_template  # TR-Post compiled in: the graph takes a template
    graph = onnx.load(str(out / "model.onnx")).graph
    assert [i.name for i in graph.input] == ["image", "template"]
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 3, 64, 96]


def test_tensorrt_target_without_tensorrt_ships_the_plugin_onnx(tmp_path: Path, capsys) -> None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("tensorrt is installed here: this test covers build hosts without it")
    ckpt = _checkpoint(tmp_path, context={"enabled": True})
    out = tmp_path / "trt"
    assert cc.main(["--checkpoint", str(ckpt), "--target", "tensorrt", "--out", str(out)]) == 0
    assert "engine is built on the target machine" in capsys.readouterr().err
    meta = ArtifactMetadata.load(out)
    assert meta.target == "tensorrt" and meta.precision == "fp16"
    assert meta.onnx_file == "model.onnx" and meta.tensorrt is None
    assert meta.model_sha256 == sha256_file(out / "model.onnx")
    counts = op_counts(onnx.load(str(out / "model.onnx")))
    assert counts["rddn::ContextRoIAlign"] >= 1 and counts["RoiAlign"] == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--target", "onnxruntime", "--input-size", "100", "128"], "multiples of 32"),
        (["--target", "onnxruntime", "--precision", "fp16"], "fp16 is for --target tensorrt"),
        (["--target", "onnxruntime", "--test-proposals", "0"], "--test-proposals"),
    ],
)
def test_bad_options_exit_2_with_a_clear_message(tmp_path: Path, capsys, argv: list[str], message: str) -> None:
    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"not used")
    assert cc.main(["--checkpoint", str(ckpt), *argv, "--out", str(tmp_path / "o")]) == 2
    assert message in capsys.readouterr().err


def test_missing_checkpoint_names_the_file(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nope.pt"
    assert cc.main(["--checkpoint", str(missing), "--target", "onnxruntime", "--out", str(tmp_path / "o")]) == 2
    assert str(missing) in capsys.readouterr().err


def test_corrupt_checkpoint_exits_2_naming_the_file(tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "broken.pt"
    ckpt.write_bytes(b"definitely not a torch checkpoint")
    assert cc.main(["--checkpoint", str(ckpt), "--target", "onnxruntime", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "rddn compile:" in err and str(ckpt) in err


def test_input_size_from_train_config() -> None:
    assert cc.input_size_from_train_config({"data": {"input_size": 512}}) == (512, 512)
    assert cc.input_size_from_train_config({"data": {"image_size": [480, 640]}}) == (480, 640)
    assert cc.input_size_from_train_config({"lr": 0.01}) is None
    # the data config's test-time resize (training/data: test_short_size, test_max_size)
    data = {"data": {"train": {"test_short_size": 256, "test_max_size": 256}}}
    assert cc.input_size_from_train_config(data) == (256, 256)
    data = {"data": {"train": {"test_short_size": 800, "test_max_size": 1333}}}
    assert cc.input_size_from_train_config(data) == (800, 1344)


def test_tensorrt_build_step_records_the_engine(tmp_path: Path, monkeypatch) -> None:
    """Where TensorRT imports, compile hands the plugin ONNX to engines.tensorrt_build and ships the engine."""
    from types import SimpleNamespace

    from engines.artifact import TensorRTInfo

    calls = {}

    def build_engine(onnx_path, engine_path, *, precision, max_batch, progress):
        calls.update(onnx=Path(onnx_path), precision=precision, max_batch=max_batch)
        progress("building the engine")
        Path(engine_path).write_bytes(b"serialized engine")
        return TensorRTInfo(version="10.11.0", gpu_arch="sm_90", build_flags=["strongly_typed"])

    monkeypatch.setattr(cc, "_tensorrt_builder", lambda: SimpleNamespace(build_engine=build_engine))
    ckpt = _checkpoint(tmp_path, context={"enabled": True})
    out = tmp_path / "trt"
    assert cc.main(["--checkpoint", str(ckpt), "--target", "tensorrt", "--no-verify", "--out", str(out)]) == 0
    assert calls == {"onnx": out / "model.onnx", "precision": "fp16", "max_batch": 1}
    meta = ArtifactMetadata.load(out)
    assert meta.model_file == "model.engine" and meta.onnx_file == "model.onnx"
    assert meta.model_sha256 == sha256_file(out / "model.engine")
    assert meta.tensorrt is not None and meta.tensorrt.gpu_arch == "sm_90"


def test_plugin_graph_self_check_is_skipped_at_deployment_sizes(tmp_path: Path) -> None:
    from engines.export_onnx import ExportSpec

    ckpt = tmp_path / "model.pt"
    ckpt.write_bytes(b"x")
    options = cc.CompileOptions(ckpt, "tensorrt", tmp_path / "o")
    small, large = ExportSpec((256, 256), roi_ops="rddn", precision="fp16"), ExportSpec((640, 640), roi_ops="rddn",
                                                                                           precision="fp16")
    assert cc._self_check_plan(options, small) == (True, "")
    run, why = cc._self_check_plan(options, large)
    assert not run and "onnx.reference" in why
    ort_options = cc.CompileOptions(ckpt, "onnxruntime", tmp_path / "o")
    assert cc._self_check_plan(ort_options, ExportSpec((640, 640)))[0]  # ONNX Runtime checks at any size


def _signing_keys(directory: Path) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    directory.mkdir()
    private, public = directory / "release.pem", directory / "release.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    private.chmod(0o600)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def test_compile_signs_the_artifact_with_sign_key(tmp_path: Path, capsys) -> None:
    from engines.signing import verify_artifact

    private, public = _signing_keys(tmp_path / "keys")
    ckpt = _checkpoint(tmp_path)
    out = tmp_path / "artifact"
    private.chmod(0o644)  # a key others can read: refused before minutes of export
    assert cc.main(["--checkpoint", str(ckpt), "--target", "onnxruntime", "--input-size", "64", "96", "--no-verify",
                    "--sign-key", str(private), "--out", str(out)]) == 2
    assert "--sign-key" in capsys.readouterr().err and not out.exists()
    private.chmod(0o600)
    assert cc.main(["--checkpoint", str(ckpt), "--target", "onnxruntime", "--input-size", "64", "96", "--no-verify",
                    "--sign-key", str(private), "--out", str(out)]) == 0
    assert "signing the artifact" in capsys.readouterr().err
    assert set(verify_artifact(out, public).files) == {"metadata.json", "model.onnx"}
    # compiling again into the same directory without a key leaves no stale signature behind
    assert cc.main(["--checkpoint", str(ckpt), "--target", "onnxruntime", "--input-size", "64", "96", "--no-verify",
                    "--out", str(out)]) == 0
    assert not (out / "signature.json").exists()
