"""benchmarks/gpu_inference.py: the CPU smoke mode runs end to end, and its statistics, verdicts and
TensorRT fallbacks say what they claim (the GPU figures themselves are printed by the script, not tested)."""
from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "gpu_inference.py"


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("gpu_inference_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = module  # dataclasses look their module up while the class body runs
    spec.loader.exec_module(module)
    return module


bench = _load_benchmark()


def test_cpu_smoke_mode_prints_eager_latency_and_why_tensorrt_did_not_run() -> None:
    out = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--size", "128", "--iters", "1"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "ResNet-50 FPN, reference tr_pre/none, context on, 300 test proposals" in text
    assert "input 128x128" in text
    assert re.search(r"^PyTorch eager FP32 +mean +\d+\.\d+ ms +p50 +\d+\.\d+ ms +p99 +\d+\.\d+ ms +\d+\.\d+ frames/s "
                     r"+\(n=1\)$", text, re.M), text
    assert re.search(r"^PyTorch eager FP16 \(autocast\) +not run: .*CUDA only", text, re.M), text
    assert re.search(r"^TensorRT FP16 engine \(device buffers\) +not run: --device cpu: TensorRT needs a CUDA GPU",
                     text, re.M), text
    assert "TensorRT FP16 TensorRTBackend.detect (host I/O)" in text
    assert "torch 2." in text and "TensorRT " in text
    assert "target TensorRT FP16 <= 8 ms/frame (H100, 800x1344): NOT MEASURED" in text


def test_latency_statistics() -> None:
    lat = bench.Latency("x", [1.0, 2.0, 3.0, 4.0, 100.0])
    assert lat.mean == pytest.approx(22.0)
    assert lat.p50 == pytest.approx(3.0)
    assert lat.p99 == pytest.approx(96.16)  # numpy's linear interpolation between 4 and 100
    assert lat.fps == pytest.approx(1000.0 / 22.0)


@pytest.mark.parametrize("engine_ms, verdict", [(6.0, "met"), (9.5, "MISSED")])
def test_summary_ratios_and_target_verdict(engine_ms: float, verdict: str) -> None:
    results = [bench.Latency("PyTorch eager FP32", [40.0]), bench.Latency("PyTorch eager FP16 (autocast)", [20.0]),
               bench.Latency("TensorRT FP16 engine (device buffers)", [engine_ms]),
               bench.NotRun("TensorRT FP16 TensorRTBackend.detect (host I/O)", "no pycuda")]
    lines = bench.summary_lines(results, (800, 1344))
    assert "ratio PyTorch eager FP16 (autocast) / PyTorch eager FP32 frames/s:   2.00x" in lines
    assert f"ratio TensorRT FP16 engine / PyTorch eager FP16 frames/s: {20.0 / engine_ms:6.2f}x" in lines
    assert lines[-1].startswith(f"target TensorRT FP16 <= 8 ms/frame (H100, 800x1344): {verdict} (mean")
    assert not any("TensorRTBackend" in line for line in lines)  # a NotRun variant gets no ratio


def test_a_failing_variant_is_reported_not_raised() -> None:
    def boom():
        raise RuntimeError("out of memory at 800x1344")

    result = bench.guarded("PyTorch eager FP32", boom)
    assert isinstance(result, bench.NotRun)
    assert result.line().endswith("not run: RuntimeError: out of memory at 800x1344")


@pytest.mark.parametrize("argv, message", [
    (["--size", "100"], "multiples of 32"),
    (["--size", "64", "64", "64"], "one or two"),
    (["--config", "missing.yaml"], "--config: file not found: missing.yaml"),
    (["--iters", "0"], "--iters must be >= 1"),
    (["--device", "mps"], "use cuda, cuda:N or cpu"),
])
def test_bad_options_name_the_option(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_defaults_are_the_issue_4_setting() -> None:
    args = bench.parse_args([])
    assert args.size == [800, 1344] and args.device == "cuda" and args.warmup == 10 and args.iters == 100
    cfg = bench.model_config(args)
    assert cfg.backbone.depth == 50 and cfg.reference.input == "tr_pre" and cfg.context.enabled
    assert cfg.rpn.post_nms_top_n_test == 300
    assert bench.model_config(bench.parse_args(["--proposals", "128"])).rpn.post_nms_top_n_test == 128


def test_tensorrt_compile_goes_through_rddn_compile(tmp_path: Path) -> None:
    """Without tensorrt the project's compile writes the plugin ONNX but no engine; the benchmark says so."""
    if bench.tensorrt_version()[0] is not None:
        pytest.skip("tensorrt imports here: compile would build a real engine (covered by the GPU run)")
    import torch

    from training.model import ModelConfig, build_model

    torch.set_num_threads(1)
    cfg = ModelConfig.model_validate({
        "class_names": ["open", "short"], "backbone": {"depth": 18, "width": 16, "norm": "gn", "frozen_stages": 0},
        "fpn": {"out_channels": 32}, "roi_head": {"representation_size": 64},
        "reference": {"input": "tr_pre", "ptg_hidden": 16}, "context": {"enabled": True},
        "rpn": {"post_nms_top_n_test": 20},
    })
    model = build_model(cfg, load_pretrained=False).eval()
    args = bench.parse_args(["--device", "cpu", "--size", "64", "96", "--artifact-dir", str(tmp_path / "art")])
    assert bench.tensorrt_blocker(args) == "--device cpu: TensorRT needs a CUDA GPU"
    with pytest.raises(RuntimeError, match="compile wrote no engine"):
        bench.compile_tensorrt_artifact(model, args, tmp_path)
    onnx_text = (tmp_path / "art" / "model.onnx").read_bytes()
    assert b"MultiLevelRoIAlign" in onnx_text or b"ContextRoIAlign" in onnx_text
    metadata = (tmp_path / "art" / "metadata.json").read_text()
    assert '"target": "tensorrt"' in metadata and '"precision": "fp16"' in metadata
    assert '"input_height": 64' in metadata and '"input_width": 96' in metadata
