"""TensorRT backend (GPU): runs a ``target: tensorrt`` artifact, same result type as the ONNX Runtime backend.

Start-up: read ``metadata.json``; use the shipped engine when it was built for this GPU architecture and TensorRT
version (and its hash matches), otherwise rebuild from the shipped TensorRT-variant ONNX into the engine cache
(``engines.tensorrt_build.ensure_engine``; ``progress`` is called during the build so the service can extend its
systemd start timeout). Then deserialize, allocate device buffers and a stream once, and run batches.

Device memory goes through pycuda when it imports, else cuda-python (``cuda.bindings.runtime``); both, like
``tensorrt``, are imported lazily so the daemon's CPU-only install can import this module.
Frames are stretched to the input size and boxes scaled back per axis by ``inspector.backends.frames``.
"""
from __future__ import annotations

import logging

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from engines.artifact import ArtifactMetadata, sha256_file
from inspector.backends.base import Detection
from inspector.backends.frames import OUTPUT_NAMES, detections_from_outputs, resize_batch

_log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ device memory
class _PyCudaMemory:
    """Device buffers and a stream through pycuda (own context on ``device``)."""

    def __init__(self, device: int) -> None:
        import pycuda.driver as cuda

        cuda.init()
        self._cuda = cuda
        self._context = cuda.Device(device).make_context()
        self.stream = cuda.Stream()
        self.stream_handle = self.stream.handle

    def alloc(self, nbytes: int) -> Any:
        return self._cuda.mem_alloc(max(int(nbytes), 1))

    def ptr(self, buffer: Any) -> int:
        return int(buffer)

    def to_device(self, buffer: Any, host: np.ndarray) -> None:
        self._cuda.memcpy_htod_async(buffer, host, self.stream)

    def to_host(self, host: np.ndarray, buffer: Any) -> None:
        self._cuda.memcpy_dtoh_async(host, buffer, self.stream)

    def synchronize(self) -> None:
        self.stream.synchronize()

    def close(self) -> None:
        self._context.pop()


class _CudaPythonMemory:
    """The same through cuda-python's runtime API (primary context of ``device``)."""

    def __init__(self, device: int) -> None:
        from cuda.bindings import runtime as cudart

        self._rt = cudart
        self._check(cudart.cudaSetDevice(device), "cudaSetDevice")
        self.stream = self._check(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.stream_handle = int(self.stream)
        self._buffers: list[int] = []

    def _check(self, result: Any, what: str) -> Any:
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self._rt.cudaError_t.cudaSuccess:
            raise RuntimeError(f"CUDA {what} failed: {err}")
        return values[0] if len(values) == 1 else values

    def alloc(self, nbytes: int) -> int:
        ptr = int(self._check(self._rt.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc"))
        self._buffers.append(ptr)
        return ptr

    def ptr(self, buffer: int) -> int:
        return buffer

    def to_device(self, buffer: int, host: np.ndarray) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self._rt.cudaMemcpyAsync(buffer, host.ctypes.data, host.nbytes, kind, self.stream), "memcpy H2D")

    def to_host(self, host: np.ndarray, buffer: int) -> None:
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self._rt.cudaMemcpyAsync(host.ctypes.data, buffer, host.nbytes, kind, self.stream), "memcpy D2H")

    def synchronize(self) -> None:
        self._check(self._rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def close(self) -> None:
        for ptr in self._buffers:
            self._rt.cudaFree(ptr)
        self._buffers.clear()
        self._rt.cudaStreamDestroy(self.stream)


def _device_memory(device: int) -> Any:
    try:
        import pycuda.driver  # noqa: F401
    except ImportError:
        try:
            from cuda.bindings import runtime  # noqa: F401
        except ImportError as exc:
            raise ImportError("the TensorRT backend needs pycuda or cuda-python (pip install pycuda)") from exc
        return _CudaPythonMemory(device)
    return _PyCudaMemory(device)


# ------------------------------------------------------------------------------------------------------ backend
@dataclass
class _Binding:
    name: str
    dtype: np.dtype
    is_input: bool
    buffer: Any = None
    host: np.ndarray | None = None


def _resolve_engine(artifact_dir: Path, metadata: ArtifactMetadata, cache_dir: Path | None, max_batch: int,
                    progress: Callable[[str], None] | None, verify_hash: bool) -> Path:
    """The shipped engine when it fits this GPU/TensorRT, else a cached or freshly built one from the ONNX."""
    from engines import tensorrt_build

    arch = tensorrt_build.current_gpu_arch()
    version = tensorrt_build.tensorrt_version()
    shipped = ArtifactMetadata.file_path(artifact_dir, metadata.model_file)
    info = metadata.tensorrt
    if (info is not None and (info.gpu_arch, info.version) == (arch, version) and shipped.is_file()
            and shipped.suffix != ".onnx"):
        if not verify_hash or sha256_file(shipped) == metadata.model_sha256:
            return shipped
        raise ValueError(f"{shipped}: sha256 does not match metadata.json model_sha256 (corrupt or swapped file)")
    onnx_name = metadata.onnx_file or (metadata.model_file if metadata.model_file.endswith(".onnx") else None)
    if onnx_name is None:
        raise FileNotFoundError(f"{artifact_dir / 'metadata.json'}: the engine was built for "
                                f"{info.gpu_arch if info else '?'} / TensorRT {info.version if info else '?'} but this "
                                f"machine is {arch} / {version}, and no onnx_file is shipped to rebuild from")
    if progress:
        progress(f"shipped engine does not match {arch} / TensorRT {version}: using the engine cache")
    engine_path, _ = tensorrt_build.ensure_engine(ArtifactMetadata.file_path(artifact_dir, onnx_name), cache_dir, max_batch=max_batch,
                                                  progress=progress, gpu_arch=arch, trt_version=version)
    return engine_path


class TensorRTBackend:
    """``DetectorBackend`` over a TensorRT engine (see the module docstring)."""

    def __init__(self, artifact_dir: Path | str, cache_dir: Path | str | None = None, max_batch: int = 1,
                 device: int = 0, progress: Callable[[str], None] | None = None, verify_hash: bool = True) -> None:
        try:
            import tensorrt as trt
        except ImportError as exc:
            raise ImportError("the tensorrt backend needs TensorRT >= 10.11 (pip install tensorrt) and a CUDA GPU; "
                              "use backend 'onnxruntime' on CPU-only machines") from exc
        self.artifact_dir = Path(artifact_dir)
        self.metadata = ArtifactMetadata.load(self.artifact_dir)
        if self.metadata.target != "tensorrt":
            raise ValueError(f"{self.artifact_dir / 'metadata.json'}: target is '{self.metadata.target}', "
                             "the tensorrt backend runs 'tensorrt' artifacts")
        self.class_names = tuple(self.metadata.class_names)
        self.needs_template = self.metadata.needs_template
        self.uses_template = self.metadata.needs_template or self.metadata.tr_post
        self.model_sha256 = self.metadata.model_sha256
        self.precision = self.metadata.precision
        self._size = (self.metadata.preprocessing.input_height, self.metadata.preprocessing.input_width)
        engine_path = _resolve_engine(self.artifact_dir, self.metadata,
                                      Path(cache_dir) if cache_dir is not None else None, max_batch, progress,
                                      verify_hash)
        self.engine_path = engine_path
        self._trt = trt
        self._memory = _device_memory(device)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._register_plugins()
        self._engine = trt.Runtime(self._logger).deserialize_cuda_engine(engine_path.read_bytes())
        if self._engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {engine_path}")
        self._context = self._engine.create_execution_context()
        self._bindings = self._collect_bindings()
        self.batch_size = self._batch_capacity()
        self._allocate(self.batch_size)

    def _register_plugins(self) -> None:
        """AOT plugin engines run without Python; registering the definitions too is harmless and covers
        TensorRT versions that still look the creator up at deserialization."""
        try:
            from engines import tensorrt_build, tensorrt_plugins

            tensorrt_plugins.register_plugins(tensorrt_build.current_gpu_arch())
        except ImportError as exc:
            # not fatal: AOT plugins are embedded in the engine; say so, since a failing deserialize follows
            _log.info("TensorRT plugin definitions not registered (%s); relying on the engine's AOT plugins", exc)

    def _collect_bindings(self) -> dict[str, _Binding]:
        trt, engine = self._trt, self._engine
        bindings = {}
        for index in range(engine.num_io_tensors):
            name = engine.get_tensor_name(index)
            bindings[name] = _Binding(name, np.dtype(trt.nptype(engine.get_tensor_dtype(name))),
                                      engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT)
        expected_inputs = {"image", "template"} if self.uses_template else {"image"}
        inputs = {n for n, b in bindings.items() if b.is_input}
        if inputs != expected_inputs or not set(OUTPUT_NAMES) <= set(bindings):
            raise ValueError(f"{self.engine_path}: engine I/O {sorted(bindings)} does not match the artifact "
                             f"contract (inputs {sorted(expected_inputs)}, outputs {list(OUTPUT_NAMES)})")
        return bindings

    def _batch_capacity(self) -> int:
        shape = tuple(self._engine.get_tensor_shape("image"))
        if shape[0] >= 0:
            return int(shape[0])
        return int(self._engine.get_tensor_profile_shape("image", 0)[2][0])

    def _allocate(self, batch: int) -> None:
        h, w = self._size
        for name, binding in self._bindings.items():
            if binding.is_input:
                self._context.set_input_shape(name, (batch, 3, h, w))
        for name, binding in self._bindings.items():
            shape = tuple(self._context.get_tensor_shape(name))
            binding.host = np.empty(shape, dtype=binding.dtype)
            binding.buffer = self._memory.alloc(binding.host.nbytes)
            self._context.set_tensor_address(name, self._memory.ptr(binding.buffer))

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for name, array in feeds.items():
            binding = self._bindings[name]
            binding.host[...] = array  # type: ignore[index]
            self._memory.to_device(binding.buffer, binding.host)
        if not self._context.execute_async_v3(self._memory.stream_handle):
            raise RuntimeError(f"TensorRT execution failed ({self.engine_path})")
        outputs = {}
        for name in OUTPUT_NAMES:
            binding = self._bindings[name]
            self._memory.to_host(binding.host, binding.buffer)  # type: ignore[arg-type]
        self._memory.synchronize()
        for name in OUTPUT_NAMES:
            outputs[name] = self._bindings[name].host.copy()  # type: ignore[union-attr]
        return outputs

    def detect(self, images: Sequence[np.ndarray], templates: Sequence[np.ndarray | None]) -> list[list[Detection]]:
        if not images:
            return []
        if self.uses_template:
            if any(t is None for t in templates):
                if self.needs_template:
                    raise ValueError("this model needs a template for every frame")
                templates = [t if t is not None else img for t, img in zip(templates, images)]  # TR-Post off
        results: list[list[Detection]] = []
        for start in range(0, len(images), self.batch_size):
            chunk = list(images[start:start + self.batch_size])
            count = len(chunk)
            pad = [chunk[-1]] * (self.batch_size - count)  # a fixed-size engine batch: repeat, then drop
            feeds = {"image": resize_batch(chunk + pad, self._size)}
            if self.uses_template:
                chunk_t = list(templates[start:start + self.batch_size])
                feeds["template"] = resize_batch(chunk_t + [chunk_t[-1]] * len(pad), self._size)  # type: ignore
            outputs = self._run(feeds)
            results += detections_from_outputs(outputs, [f.shape for f in chunk], self._size, self.class_names)
        return results

    def close(self) -> None:
        if getattr(self, "_memory", None) is not None:
            self._context = None
            self._engine = None
            self._memory.close()
            self._memory = None
