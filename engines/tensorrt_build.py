"""Build, describe and cache TensorRT engines from the TensorRT-variant ONNX (``rddn`` plugin nodes).

An engine only runs on the GPU architecture and TensorRT version it was built with, so engines are cached under
a key of (ONNX content hash, GPU arch, TensorRT version, build options), with a JSON manifest next to each
engine. The daemon calls :func:`ensure_engine` at start-up: a matching cached engine is reused, anything else is
rebuilt from the ONNX shipped in the artifact (minutes on a big model: ``progress`` is called on every build step
so a systemd service can send EXTEND_TIMEOUT_USEC).

The network is strongly typed: precisions come from the ONNX (FP16 casts are in the graph), there is no FP16
builder flag. TensorRT >= 10.11 (``tensorrt.plugin.aot_impl``); ``tensorrt`` is imported lazily, and this module
does not need torch.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from engines.artifact import TensorRTInfo, sha256_file

ProgressCallback = Callable[[str], None]
MANIFEST_SUFFIX = ".json"
MANIFEST_FORMAT = "rddn-engine-manifest"


class EngineBuildError(RuntimeError):
    """TensorRT could not parse or build the network (parser/builder messages attached)."""


@dataclass(frozen=True)
class EngineKey:
    """What an engine is valid for. Any field differing from this machine's means: rebuild."""

    onnx_sha256: str
    gpu_arch: str
    tensorrt_version: str
    max_batch: int = 1
    workspace_mib: int = 4096

    def filename(self) -> str:
        return (f"rddn-{self.onnx_sha256[:16]}-{self.gpu_arch}-trt{self.tensorrt_version}"
                f"-b{self.max_batch}.engine")


def tensorrt_version() -> str:
    import tensorrt as trt

    return str(trt.__version__)


def current_gpu_arch(device: int = 0) -> str:
    """``sm_XY`` of CUDA device ``device``, through cuda-python, pycuda or torch (whichever imports)."""
    try:
        from cuda.bindings import runtime as cudart

        err, major = cudart.cudaDeviceGetAttribute(cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor, device)
        err2, minor = cudart.cudaDeviceGetAttribute(cudart.cudaDeviceAttr.cudaDevAttrComputeCapabilityMinor, device)
        if err == cudart.cudaError_t.cudaSuccess and err2 == cudart.cudaError_t.cudaSuccess:
            return f"sm_{major}{minor}"
    except ImportError:
        pass
    try:
        import pycuda.driver as cuda

        cuda.init()
        major, minor = cuda.Device(device).compute_capability()
        return f"sm_{major}{minor}"
    except ImportError:
        pass
    except Exception as exc:  # pycuda present but no usable device
        raise RuntimeError(f"no CUDA device {device}: {exc}") from exc
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(device)
            return f"sm_{major}{minor}"
    except ImportError:
        pass
    raise RuntimeError(f"no CUDA device {device} found (tried cuda-python, pycuda, torch)")


def build_flags(key: EngineKey) -> list[str]:
    """Human-readable build options recorded in the manifest and in ``metadata.json``."""
    return ["strongly_typed", f"max_batch={key.max_batch}", f"workspace_mib={key.workspace_mib}",
            "plugins=rddn::MultiLevelRoIAlign,rddn::ContextRoIAlign (AOT PTX)"]


def _strongly_typed_flags(trt: Any) -> int:
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)  # TensorRT 11: strongly typed is the only mode


def _progress_monitor(trt: Any, progress: ProgressCallback) -> Any:
    """A ``trt.IProgressMonitor`` forwarding phases/steps to ``progress`` (None where TensorRT lacks it)."""
    if not hasattr(trt, "IProgressMonitor"):
        return None

    class _Monitor(trt.IProgressMonitor):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            progress(f"{phase_name}: start ({num_steps} steps)")

        def step_complete(self, phase_name: str, step: int) -> bool:
            progress(f"{phase_name}: step {step + 1}")
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            progress(f"{phase_name}: done")

    return _Monitor()


def _set_profile(trt: Any, builder: Any, network: Any, config: Any, max_batch: int) -> None:
    """One optimization profile: dynamic batch 1..max_batch; every other dimension must be fixed."""
    profile = None
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        shape = list(tensor.shape)
        if all(d >= 0 for d in shape):
            continue
        if any(d < 0 for d in shape[1:]):
            raise EngineBuildError(f"input '{tensor.name}' has dynamic dims {shape} besides the batch: the artifact "
                                   "graph must have a fixed input size")
        profile = profile or builder.create_optimization_profile()
        rest = shape[1:]
        profile.set_shape(tensor.name, [1, *rest], [max_batch, *rest], [max_batch, *rest])
    if profile is not None:
        config.add_optimization_profile(profile)


def build_engine(onnx_path: Path | str, engine_path: Path | str, *, precision: str = "fp16", max_batch: int = 1,
                 workspace_mib: int = 4096, progress: ProgressCallback | None = None,
                 key: EngineKey | None = None) -> TensorRTInfo:
    """Parse ``onnx_path`` (plugins registered first), build a strongly typed engine, write it to ``engine_path``
    with its manifest, and return the :class:`TensorRTInfo` for ``metadata.json``.

    ``precision`` is recorded only: a strongly typed network takes its precisions from the ONNX casts. ``key``
    (from :func:`ensure_engine`) must describe this machine: an engine cannot be built for another GPU.
    """
    import tensorrt as trt

    from engines import tensorrt_plugins

    say = progress or (lambda _message: None)
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"TensorRT build: ONNX file not found: {onnx_path}")
    arch = current_gpu_arch()
    here = EngineKey(sha256_file(onnx_path), arch, str(trt.__version__), max_batch, workspace_mib)
    if key is not None and key != here:
        raise EngineBuildError(f"asked to build for {key} but this machine is {here}")
    key = here
    say(f"registering rddn plugins (PTX for {arch})")
    tensorrt_plugins.register_plugins(arch)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_strongly_typed_flags(trt))
    parser = trt.OnnxParser(network, logger)
    say(f"parsing {onnx_path.name}")
    if not parser.parse_from_file(str(onnx_path)):
        errors = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT could not parse {onnx_path}:\n{errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    _set_profile(trt, builder, network, config, max_batch)
    monitor = _progress_monitor(trt, say)
    if monitor is not None:
        config.progress_monitor = monitor
    say("building the engine")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT failed to build an engine from {onnx_path} (see the log above)")
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(engine_path, bytes(serialized))
    flags = build_flags(key) + [f"precision={precision}"]
    info = TensorRTInfo(version=key.tensorrt_version, gpu_arch=arch, build_flags=flags)
    write_manifest(engine_path, key, info)
    say(f"engine written: {engine_path}")
    return info


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def manifest_path(engine_path: Path) -> Path:
    return engine_path.with_suffix(engine_path.suffix + MANIFEST_SUFFIX)


def write_manifest(engine_path: Path, key: EngineKey, info: TensorRTInfo) -> Path:
    """``<engine>.json``: the key it was built for, the engine's own hash, and the TensorRTInfo."""
    manifest = {
        "format": MANIFEST_FORMAT,
        "key": asdict(key),
        "engine_sha256": sha256_file(engine_path),
        "tensorrt": info.model_dump(mode="json"),
        "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    path = manifest_path(engine_path)
    _atomic_write(path, (json.dumps(manifest, indent=2) + "\n").encode())
    return path


def read_manifest(engine_path: Path) -> dict[str, Any] | None:
    """The manifest of ``engine_path``, or None when missing or unreadable (then the engine is rebuilt)."""
    path = manifest_path(engine_path)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == MANIFEST_FORMAT else None


def engine_matches(engine_path: Path, key: EngineKey) -> bool:
    """True when ``engine_path`` exists, its manifest records exactly ``key``, and its bytes are the ones built."""
    manifest = read_manifest(engine_path)
    if manifest is None or not engine_path.is_file():
        return False
    return manifest.get("key") == asdict(key) and manifest.get("engine_sha256") == sha256_file(engine_path)


def default_cache_dir() -> Path:
    """``$RDDN_ENGINE_CACHE``, else ``$RDDN_CACHE_DIR/engines``, else systemd's ``$CACHE_DIRECTORY/engines`` (the
    unit's CacheDirectory=, writable where the home directory is not), else ``~/.cache/rddn/engines``."""
    if env := os.environ.get("RDDN_ENGINE_CACHE"):
        return Path(env)
    if root := os.environ.get("RDDN_CACHE_DIR"):
        return Path(root) / "engines"
    if systemd := os.environ.get("CACHE_DIRECTORY"):
        return Path(systemd.split(":")[0]) / "engines"
    return Path.home() / ".cache" / "rddn" / "engines"


def ensure_engine(onnx_path: Path | str, cache_dir: Path | str | None = None, *, max_batch: int = 1,
                  workspace_mib: int = 4096, progress: ProgressCallback | None = None,
                  gpu_arch: str | None = None, trt_version: str | None = None,
                  builder: Callable[..., TensorRTInfo] = build_engine) -> tuple[Path, TensorRTInfo]:
    """The cached engine for ``onnx_path`` on this GPU / TensorRT, building it when missing or stale.

    ``gpu_arch`` / ``trt_version`` default to this machine's; ``builder`` is :func:`build_engine` (called with
    ``onnx_path, engine_path, max_batch=, workspace_mib=, progress=, key=``; it writes the engine and manifest).
    """
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise FileNotFoundError(f"cannot (re)build the TensorRT engine: ONNX not found at {onnx_path}")
    key = EngineKey(sha256_file(onnx_path), gpu_arch or current_gpu_arch(), trt_version or tensorrt_version(),
                    max_batch, workspace_mib)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    engine_path = cache / key.filename()
    if engine_matches(engine_path, key):
        manifest = read_manifest(engine_path)
        assert manifest is not None
        return engine_path, TensorRTInfo.model_validate(manifest["tensorrt"])
    if progress:
        progress(f"no engine for {key.gpu_arch} / TensorRT {key.tensorrt_version} in {cache}: building one")
    info = builder(onnx_path, engine_path, max_batch=max_batch, workspace_mib=workspace_mib, progress=progress,
                   key=key)
    if not engine_matches(engine_path, key):
        raise EngineBuildError(f"built {engine_path} but its manifest does not match {key}")
    return engine_path, info
