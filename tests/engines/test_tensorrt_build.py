"""TensorRT engine caching and plugin registration.

The cache logic (key = ONNX hash x GPU arch x TensorRT version x options, manifest, rebuild on mismatch) is plain
Python and is tested here with a stand-in builder that writes bytes, because no TensorRT runs on CI. Everything
that needs TensorRT itself is skipped with the reason when ``tensorrt`` does not import.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from engines import tensorrt_build as tb
from engines.artifact import TensorRTInfo

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
NO_TENSORRT = "tensorrt is not installed here (its wheels download from NVIDIA's index at install time: offline)"


class _RecordingBuilder:
    """Stands in for ``build_engine``: writes deterministic bytes and the manifest, counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, onnx_path: Path, engine_path: Path, *, max_batch: int, workspace_mib: int, progress,
                 key: tb.EngineKey) -> TensorRTInfo:
        self.calls += 1
        engine_path.write_bytes(b"engine for " + key.filename().encode())
        info = TensorRTInfo(version=key.tensorrt_version, gpu_arch=key.gpu_arch, build_flags=tb.build_flags(key))
        tb.write_manifest(engine_path, key, info)
        return info


@pytest.fixture()
def onnx_file(tmp_path: Path) -> Path:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not really onnx, only hashed")
    return path


def test_engine_reused_when_gpu_and_tensorrt_match(onnx_file: Path, tmp_path: Path) -> None:
    builder = _RecordingBuilder()
    messages: list[str] = []
    first, info = tb.ensure_engine(onnx_file, tmp_path / "cache", gpu_arch="sm_90", trt_version="10.11.0",
                                   builder=builder, progress=messages.append)
    again, info_again = tb.ensure_engine(onnx_file, tmp_path / "cache", gpu_arch="sm_90", trt_version="10.11.0",
                                         builder=builder)
    assert builder.calls == 1 and first == again and info == info_again
    assert info.gpu_arch == "sm_90" and info.version == "10.11.0" and "strongly_typed" in info.build_flags
    assert "sm_90" in first.name and "trt10.11.0" in first.name
    assert any("building" in m for m in messages)


@pytest.mark.parametrize("change", ["gpu_arch", "trt_version", "onnx", "max_batch"])
def test_engine_rebuilt_when_anything_in_the_key_changes(onnx_file: Path, tmp_path: Path, change: str) -> None:
    builder = _RecordingBuilder()
    args = dict(gpu_arch="sm_90", trt_version="10.11.0", max_batch=1)
    path, _ = tb.ensure_engine(onnx_file, tmp_path, builder=builder, **args)
    if change == "onnx":
        onnx_file.write_bytes(b"a retrained model")
    else:
        args[change] = {"gpu_arch": "sm_89", "trt_version": "11.0.0", "max_batch": 4}[change]
    other, _ = tb.ensure_engine(onnx_file, tmp_path, builder=builder, **args)
    assert builder.calls == 2 and other != path
    assert path.is_file() and other.is_file()  # engines for other GPUs stay cached side by side


def test_corrupt_or_unmanifested_engine_is_rebuilt(onnx_file: Path, tmp_path: Path) -> None:
    builder = _RecordingBuilder()
    path, _ = tb.ensure_engine(onnx_file, tmp_path, gpu_arch="sm_90", trt_version="10.11.0", builder=builder)
    path.write_bytes(b"truncated")
    tb.ensure_engine(onnx_file, tmp_path, gpu_arch="sm_90", trt_version="10.11.0", builder=builder)
    assert builder.calls == 2
    tb.manifest_path(path).write_text("{not json")
    tb.ensure_engine(onnx_file, tmp_path, gpu_arch="sm_90", trt_version="10.11.0", builder=builder)
    assert builder.calls == 3


def test_builder_that_writes_no_manifest_is_an_error(onnx_file: Path, tmp_path: Path) -> None:
    def careless(onnx_path, engine_path, **_kwargs):
        engine_path.write_bytes(b"x")
        return TensorRTInfo(version="10.11.0", gpu_arch="sm_90")

    with pytest.raises(tb.EngineBuildError, match="manifest"):
        tb.ensure_engine(onnx_file, tmp_path, gpu_arch="sm_90", trt_version="10.11.0", builder=careless)


def test_missing_onnx_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        tb.ensure_engine(tmp_path / "missing.onnx", tmp_path, gpu_arch="sm_90", trt_version="10.11.0")


def test_cache_dir_from_environment(monkeypatch, tmp_path: Path) -> None:
    for name in ("RDDN_ENGINE_CACHE", "RDDN_CACHE_DIR", "CACHE_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RDDN_ENGINE_CACHE", str(tmp_path / "engines"))
    assert tb.default_cache_dir() == tmp_path / "engines"
    monkeypatch.delenv("RDDN_ENGINE_CACHE")
    monkeypatch.setenv("RDDN_CACHE_DIR", str(tmp_path / "root"))
    assert tb.default_cache_dir() == tmp_path / "root" / "engines"
    monkeypatch.delenv("RDDN_CACHE_DIR")
    monkeypatch.setenv("CACHE_DIRECTORY", f"{tmp_path}/unit:{tmp_path}/other")  # systemd CacheDirectory=
    assert tb.default_cache_dir() == tmp_path / "unit" / "engines"


@pytest.mark.skipif(not HAS_TENSORRT, reason=NO_TENSORRT)
def test_plugin_registration_validates() -> None:
    import tensorrt.plugin as trtp

    from engines import tensorrt_plugins as tp

    assert tp.register_plugins("sm_90") == "sm_90"
    assert tp.register_plugins("sm_90") == "sm_90"  # idempotent
    assert hasattr(trtp.op.rddn, tp.MULTILEVEL_OP) and hasattr(trtp.op.rddn, tp.CONTEXT_OP)
    with pytest.raises(RuntimeError, match="already registered"):
        tp.register_plugins("sm_80")


class _PoolingOnly:
    """Builds a graph of just the two plugin nodes (FP16 features, FP32 rois), exported through the custom ops."""

    IMAGE = (256, 320)

    @classmethod
    def export(cls, path: Path, rois: int) -> None:
        import torch

        from engines import custom_ops as co

        class Net(torch.nn.Module):
            def forward(self, p2, p3, p4, p5, boxes):
                feats = [p2, p3, p4, p5]
                return (co.multilevel_roi_align(feats, boxes),
                        co.context_roi_align(feats, boxes, image_height=cls.IMAGE[0], image_width=cls.IMAGE[1]))

        program = torch.onnx.export(Net().eval(), cls.inputs(rois), dynamo=True,
                                    custom_translation_table=co.onnx_translation_table(),
                                    input_names=["p2", "p3", "p4", "p5", "rois"],
                                    output_names=["pooled", "context"], verbose=False)
        program.save(str(path))

    @classmethod
    def inputs(cls, rois: int):
        import torch

        gen = torch.Generator().manual_seed(0)
        feats = [torch.randn(1, 8, cls.IMAGE[0] // s, cls.IMAGE[1] // s, generator=gen).half() for s in (4, 8, 16, 32)]
        side = torch.exp(torch.empty(rois, 2).uniform_(2.0, 6.5, generator=gen))
        centre = torch.rand(rois, 2, generator=gen) * torch.tensor([float(cls.IMAGE[1]), float(cls.IMAGE[0])])
        boxes = torch.cat([torch.zeros(rois, 1), centre - side / 2, centre + side / 2], dim=1)
        return (*feats, boxes)


def test_plugin_only_graph_exports_for_the_gpu_test(tmp_path: Path) -> None:
    """Keeps the GPU test's input honest on CPU: exactly the two plugin nodes, FP16 in/out, FP32 rois."""
    import onnx

    _PoolingOnly.export(tmp_path / "pooling.onnx", rois=16)
    model = onnx.load(str(tmp_path / "pooling.onnx"))
    assert [(n.domain, n.op_type) for n in model.graph.node] == [("rddn", "MultiLevelRoIAlign"),
                                                                   ("rddn", "ContextRoIAlign")]
    types = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    assert types == {"p2": 10, "p3": 10, "p4": 10, "p5": 10, "rois": 1, "pooled": 10, "context": 10}


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TENSORRT, reason=NO_TENSORRT)
def test_engine_with_plugins_matches_pytorch(tmp_path: Path) -> None:
    import tensorrt as trt
    import torch

    from engines import custom_ops as co

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device on this machine")
    onnx_path = tmp_path / "pooling.onnx"
    _PoolingOnly.export(onnx_path, rois=64)
    messages: list[str] = []
    engine_path, info = tb.ensure_engine(onnx_path, tmp_path / "cache", progress=messages.append)
    assert info.gpu_arch == tb.current_gpu_arch() and messages
    engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(engine_path.read_bytes())
    context = engine.create_execution_context()
    inputs = [t.cuda().contiguous() for t in _PoolingOnly.inputs(64)]
    outputs = {name: torch.empty(tuple(engine.get_tensor_shape(name)), dtype=torch.float16, device="cuda")
               for name in ("pooled", "context")}
    for name, tensor in zip(("p2", "p3", "p4", "p5", "rois"), inputs):
        context.set_tensor_address(name, tensor.data_ptr())
    for name, tensor in outputs.items():
        context.set_tensor_address(name, tensor.data_ptr())
    assert context.execute_async_v3(torch.cuda.current_stream().cuda_stream)
    torch.cuda.synchronize()
    feats, rois = inputs[:4], inputs[4]
    expected = {"pooled": co.multilevel_roi_align(feats, rois),
                "context": co.context_roi_align(feats, rois, image_height=_PoolingOnly.IMAGE[0],
                                                image_width=_PoolingOnly.IMAGE[1])}
    for name in outputs:
        torch.testing.assert_close(outputs[name].float(), expected[name].float(), rtol=2e-3, atol=2e-3)
