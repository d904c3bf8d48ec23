"""TensorRT plugins ``rddn::MultiLevelRoIAlign`` and ``rddn::ContextRoIAlign`` through ``tensorrt.plugin`` (QDP).

Each plugin is registered with a shape/dtype descriptor, an autotune declaration (FP32 or FP16 features, FP32
rois, linear NCHW) and an ahead-of-time implementation (``aot_impl``) that returns PTX compiled from
``engines/kernels/*.cu`` plus launch parameters. TensorRT embeds that PTX in the engine, so the serialized engine
runs without Python (the daemon only deserializes it).

AOT plugins pass only int32 scalars to the kernel and do not serialize attributes into the engine: the float
attributes and fixed switches are compiled into the PTX with ``-D`` defines (one PTX per attribute set, cached
by content hash); shapes and the image size are int32 kernel arguments (``pool_kernel.cuh``: input pointers,
int32 scalars, output pointer, in that order).

PTX comes from ``nvcc -ptx`` when nvcc is installed, else from NVRTC (cuda-python's ``cuda.bindings.nvrtc``); both
work without a GPU. ``tensorrt`` itself is imported only inside :func:`register_plugins`.
"""
# No ``from __future__ import annotations`` here: tensorrt.plugin reads the plugin functions' annotations at
# registration, which must be real objects (trtp.TensorDesc, npt.NDArray[np.float32]), not strings.
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, List, Literal, Mapping, Sequence, Tuple, Union

import numpy as np

from engines.host_kernels import KERNEL_DIR

PLUGIN_NAMESPACE = "rddn"
MULTILEVEL_OP = "MultiLevelRoIAlign"  # engines.custom_ops (torch) imports these names from here (torch-free)
CONTEXT_OP = "ContextRoIAlign"
KERNEL_SOURCES: dict[str, str] = {MULTILEVEL_OP: "multilevel_roi_align.cu", CONTEXT_OP: "context_roi_align.cu"}
KERNEL_PREFIX: dict[str, str] = {MULTILEVEL_OP: "rddn_multilevel_roi_align", CONTEXT_OP: "rddn_context_roi_align"}
KERNEL_HEADERS: tuple[str, ...] = ("roi_align_core.h", "pool_kernel.cuh")
BLOCK_SIZE = 256
DEFAULT_ARCH = "sm_80"  # PTX is forward compatible: sm_80 PTX is JIT-compiled by the driver for sm_90 too
NVCC_FLAGS: tuple[str, ...] = ("-ptx", "-std=c++17", "-Werror", "all-warnings", "-Xptxas", "-Werror")
NVRTC_FLAGS: tuple[str, ...] = ("-std=c++17",)

Compiler = Literal["auto", "nvcc", "nvrtc"]
FeatureType = Literal["f32", "f16"]


class PTXCompileError(RuntimeError):
    """The kernels did not compile to PTX (compiler output attached)."""


def _float_literal(value: float) -> str:
    """Exact float32 C literal (hex float), so the PTX holds bit-for-bit the attribute ONNX stored."""
    return float(np.float32(value)).hex() + "f"


def kernel_defines(
    spatial_scales: Sequence[float], output_size: int, sampling_ratio: int, aligned: int | bool,
    canonical_scale: float, level_eps: float, k: float | None = None, mode: str | None = None,
) -> dict[str, str]:
    """The ``-D`` defines of ``pool_kernel.cuh`` for one set of node attributes."""
    scales = [float(s) for s in np.asarray(spatial_scales, dtype=np.float32).ravel()]
    if not 1 <= len(scales) <= 4:
        raise ValueError(f"spatial_scales needs 1..4 values, got {scales}")
    if mode is not None and mode not in ("concat", "context_only"):
        raise ValueError(f"mode must be 'concat' or 'context_only', got {mode!r}")
    defines = {
        "RDDN_ATTR_OUTPUT_SIZE": str(int(output_size)),
        "RDDN_ATTR_SAMPLING_RATIO": str(int(sampling_ratio)),
        "RDDN_ATTR_ALIGNED": str(int(bool(aligned))),
        "RDDN_ATTR_NUM_LEVELS": str(len(scales)),
        "RDDN_ATTR_CANONICAL_SCALE": _float_literal(canonical_scale),
        "RDDN_ATTR_LEVEL_EPS": _float_literal(level_eps),
    }
    for index, scale in enumerate(scales):
        defines[f"RDDN_ATTR_SCALE{index}"] = _float_literal(scale)
    if k is not None:
        defines["RDDN_ATTR_K"] = _float_literal(k)
    if mode is not None:
        defines["RDDN_ATTR_MODE"] = "1" if mode == "context_only" else "0"
    return defines


def clean_mode(mode: str | bytes) -> str:
    """A string attribute as TensorRT hands it over (bytes, maybe NUL-terminated) -> 'concat' / 'context_only'."""
    text = mode.decode() if isinstance(mode, bytes) else str(mode)
    return text.rstrip("\x00").strip()


def kernel_name(op: str, feature_type: FeatureType) -> str:
    """The extern "C" entry point of ``op`` for FP32 or FP16 features."""
    return f"{KERNEL_PREFIX[op]}_{feature_type}"


def find_nvcc() -> str | None:
    """nvcc on PATH, in ``$CUDA_HOME/bin`` or ``/usr/local/cuda/bin``; None when absent."""
    candidates = [shutil.which("nvcc")]
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root:
            candidates.append(str(Path(root) / "bin" / "nvcc"))
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def cuda_include_dirs() -> list[str]:
    """Where NVRTC finds ``cuda_fp16.h``: the toolkit, or the ``nvidia-cuda-runtime`` wheel's headers."""
    dirs = []
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "include" / "cuda_fp16.h").is_file():
            dirs.append(str(Path(root) / "include"))
    try:
        import nvidia  # namespace package of the CUDA wheels

        for base in nvidia.__path__:
            for sub in ("cu13/include", "cuda_runtime/include", "cu12/include"):
                if (Path(base) / sub / "cuda_fp16.h").is_file():
                    dirs.append(str(Path(base) / sub))
    except ImportError:
        pass
    return dirs


def _sources_digest() -> str:
    digest = hashlib.sha256()
    for name in (*KERNEL_HEADERS, *KERNEL_SOURCES.values()):
        digest.update(name.encode())
        digest.update((KERNEL_DIR / name).read_bytes())
    return digest.hexdigest()


def _compile_nvcc(source: Path, arch: str, defines: Mapping[str, str], nvcc: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="rddn-ptx-") as tmp:
        out = Path(tmp) / "kernel.ptx"
        cmd = [nvcc, *NVCC_FLAGS, f"-arch={arch}", f"-I{KERNEL_DIR}", *[f"-D{k}={v}" for k, v in defines.items()],
               "-o", str(out), str(source)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 or result.stderr.strip():
            raise PTXCompileError(f"nvcc failed or warned on {source.name}: {' '.join(cmd)}\n{result.stderr}")
        return out.read_bytes()


def _writable_buffer(size: int) -> bytearray:
    """A fresh buffer NVRTC may write into.

    Never ``b" " * size`` (the cuda-python samples' idiom): for size 0 or 1 CPython returns its shared, interned
    bytes object, and NVRTC writing into it corrupts that constant for the whole process (seen here: every later
    ``torch.save`` wrote broken checkpoints).
    """
    return bytearray(max(int(size), 1))


def _compile_nvrtc(source: Path, arch: str, defines: Mapping[str, str]) -> bytes:
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:
        raise PTXCompileError("neither nvcc nor cuda-python's NVRTC (cuda.bindings.nvrtc) is available") from exc

    def check(result: tuple[Any, ...], what: str, log: str = "") -> tuple[Any, ...]:
        if result[0] != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            raise PTXCompileError(f"NVRTC {what} failed for {source.name}: {result[0]}\n{log}")
        return result

    includes = [f"-I{KERNEL_DIR}", *[f"-I{d}" for d in cuda_include_dirs()]]
    options = [*NVRTC_FLAGS, f"--gpu-architecture={arch.replace('sm_', 'compute_')}", *includes,
               *[f"-D{k}={v}" for k, v in defines.items()]]
    _, program = check(nvrtc.nvrtcCreateProgram(source.read_bytes(), source.name.encode(), 0, [], []), "create")
    try:
        compiled = nvrtc.nvrtcCompileProgram(program, len(options), [o.encode() for o in options])
        _, size = nvrtc.nvrtcGetProgramLogSize(program)
        log_buffer = _writable_buffer(size)
        nvrtc.nvrtcGetProgramLog(program, log_buffer)
        log = bytes(log_buffer).rstrip(b"\x00 ").decode(errors="replace")
        check(compiled, "compile", log)
        if log.strip():
            raise PTXCompileError(f"NVRTC warned on {source.name} (warnings are errors here):\n{log}")
        _, size = check(nvrtc.nvrtcGetPTXSize(program), "PTX size")
        ptx = _writable_buffer(size)
        check(nvrtc.nvrtcGetPTX(program, ptx), "get PTX")
        return bytes(ptx).rstrip(b"\x00")
    finally:
        nvrtc.nvrtcDestroyProgram(program)


def _ptx_cache_dir() -> Path:
    root = Path(os.environ.get("RDDN_CACHE_DIR") or Path.home() / ".cache" / "rddn")
    try:
        (root / "ptx").mkdir(parents=True, exist_ok=True)
        return root / "ptx"
    except OSError:
        fallback = Path(tempfile.gettempdir()) / "rddn-cache" / "ptx"
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


def compile_ptx(op: str, defines: Mapping[str, str] | None = None, arch: str = DEFAULT_ARCH,
                compiler: Compiler = "auto", use_cache: bool = True) -> bytes:
    """PTX of ``op``'s .cu file (both FP32 and FP16 entry points) for ``arch`` with the attribute defines.

    Cached by (sources, defines, arch, compiler) under ``$RDDN_CACHE_DIR/ptx`` (default ``~/.cache/rddn``).
    """
    if op not in KERNEL_SOURCES:
        raise ValueError(f"unknown op {op!r}; expected one of {sorted(KERNEL_SOURCES)}")
    defines = dict(defines or {})
    nvcc = find_nvcc() if compiler in ("auto", "nvcc") else None
    if compiler == "nvcc" and nvcc is None:
        raise PTXCompileError("nvcc not found (PATH, $CUDA_HOME/bin, /usr/local/cuda/bin)")
    used = "nvcc" if nvcc else "nvrtc"
    key = hashlib.sha256(
        f"{_sources_digest()}|{op}|{arch}|{used}|{sorted(defines.items())}".encode()
    ).hexdigest()[:24]
    cached = _ptx_cache_dir() / f"{KERNEL_PREFIX[op]}_{arch}_{key}.ptx"
    if use_cache and cached.is_file():
        return cached.read_bytes()
    source = KERNEL_DIR / KERNEL_SOURCES[op]
    ptx = _compile_nvcc(source, arch, defines, nvcc) if nvcc else _compile_nvrtc(source, arch, defines)
    if use_cache:
        tmp = cached.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(ptx)
        os.replace(tmp, cached)
    return ptx


# ----------------------------------------------------------------------------------------------------------------
# TensorRT registration (tensorrt imported lazily)

_REGISTERED_ARCH: str | None = None


def _pool_aot(trt: Any, trtp: Any, op: str, inputs: Sequence[Any], outputs: Sequence[Any], defines: dict[str, str],
              image_height: int, image_width: int, arch: str) -> tuple[bytes, bytes, Any, Any]:
    """Shared AOT body: PTX for the attributes, grid over the output, int32 args in ``pool_kernel.cuh`` order."""
    p2, p3, p4, p5, rois = inputs
    feature_type: FeatureType = "f16" if p2.dtype == trt.float16 else "f32"
    ptx = compile_ptx(op, defines, arch=arch)
    launch = trtp.KernelLaunchParams()
    launch.grid_x = trtp.cdiv(outputs[0].shape_expr.numel(), BLOCK_SIZE)
    launch.block_x = BLOCK_SIZE
    launch.shared_mem = 0
    scalars = [rois.shape_expr[0], p2.shape_expr[1]]
    for level in (p2, p3, p4, p5):
        scalars += [level.shape_expr[2], level.shape_expr[3]]
    scalars += [int(image_height), int(image_width)]
    extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(s) for s in scalars])
    return kernel_name(op, feature_type).encode(), ptx, launch, extra


def _pooled_desc(trtp: Any, p2: Any, rois: Any, output_size: int, channel_factor: int) -> Any:
    channels = p2.shape_expr[1] if channel_factor == 1 else p2.shape_expr[1] * channel_factor
    shape = (rois.shape_expr[0], channels, int(output_size), int(output_size))
    return trtp.from_shape_expr(shape, dtype=p2.dtype)


def register_plugins(arch: str | None = None) -> str:
    """Register both plugins with ``tensorrt.plugin`` (once per process) and return the PTX arch used.

    ``arch`` is the GPU's ``sm_XY`` (``engines.tensorrt_build.current_gpu_arch()`` on the build machine);
    TensorRT >= 10.11 with ``tensorrt.plugin.aot_impl`` is required.
    """
    global _REGISTERED_ARCH
    arch = arch or DEFAULT_ARCH
    if _REGISTERED_ARCH is not None:
        if _REGISTERED_ARCH != arch:
            raise RuntimeError(f"rddn plugins already registered for {_REGISTERED_ARCH}, cannot switch to {arch}")
        return arch
    import numpy.typing as npt
    import tensorrt as trt
    import tensorrt.plugin as trtp

    if not hasattr(trtp, "aot_impl"):
        raise RuntimeError(f"TensorRT {trt.__version__} has no tensorrt.plugin.aot_impl (need >= 10.11)")

    io_types = "FP32|FP16, FP32|FP16, FP32|FP16, FP32|FP16, FP32, FP32|FP16"
    # tensorrt.plugin requires this exact return annotation on aot_impl functions
    AotResult = Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]

    # -- MultiLevelRoIAlign ---------------------------------------------------------------------------------
    @trtp.register(f"{PLUGIN_NAMESPACE}::{MULTILEVEL_OP}")
    def multilevel_desc(p2: trtp.TensorDesc, p3: trtp.TensorDesc, p4: trtp.TensorDesc, p5: trtp.TensorDesc,
                        rois: trtp.TensorDesc, spatial_scales: npt.NDArray[np.float32], output_size: int,
                        sampling_ratio: int, aligned: int, canonical_scale: float,
                        level_eps: float) -> trtp.TensorDesc:
        return _pooled_desc(trtp, p2, rois, output_size, 1)

    @trtp.autotune(f"{PLUGIN_NAMESPACE}::{MULTILEVEL_OP}")
    def multilevel_autotune(p2, p3, p4, p5, rois, outputs) -> List[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(io_types, "LINEAR")]

    @trtp.aot_impl(f"{PLUGIN_NAMESPACE}::{MULTILEVEL_OP}")
    def multilevel_aot(p2: trtp.TensorDesc, p3: trtp.TensorDesc, p4: trtp.TensorDesc, p5: trtp.TensorDesc,
                       rois: trtp.TensorDesc, spatial_scales: npt.NDArray[np.float32], output_size: int,
                       sampling_ratio: int, aligned: int, canonical_scale: float, level_eps: float,
                       outputs: Tuple[trtp.TensorDesc], tactic: int) -> AotResult:
        defines = kernel_defines(spatial_scales, output_size, sampling_ratio, aligned, canonical_scale, level_eps)
        return _pool_aot(trt, trtp, MULTILEVEL_OP, (p2, p3, p4, p5, rois), outputs, defines, 0, 0, arch)

    # -- ContextRoIAlign ------------------------------------------------------------------------------------
    @trtp.register(f"{PLUGIN_NAMESPACE}::{CONTEXT_OP}")
    def context_desc(p2: trtp.TensorDesc, p3: trtp.TensorDesc, p4: trtp.TensorDesc, p5: trtp.TensorDesc,
                     rois: trtp.TensorDesc, spatial_scales: npt.NDArray[np.float32], output_size: int,
                     sampling_ratio: int, aligned: int, canonical_scale: float, level_eps: float, k: float,
                     image_height: int, image_width: int, mode: str) -> trtp.TensorDesc:
        return _pooled_desc(trtp, p2, rois, output_size, 2 if clean_mode(mode) == "concat" else 1)

    @trtp.autotune(f"{PLUGIN_NAMESPACE}::{CONTEXT_OP}")
    def context_autotune(p2, p3, p4, p5, rois, outputs) -> List[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination(io_types, "LINEAR")]

    @trtp.aot_impl(f"{PLUGIN_NAMESPACE}::{CONTEXT_OP}")
    def context_aot(p2: trtp.TensorDesc, p3: trtp.TensorDesc, p4: trtp.TensorDesc, p5: trtp.TensorDesc,
                    rois: trtp.TensorDesc, spatial_scales: npt.NDArray[np.float32], output_size: int,
                    sampling_ratio: int, aligned: int, canonical_scale: float, level_eps: float, k: float,
                    image_height: int, image_width: int, mode: str, outputs: Tuple[trtp.TensorDesc],
                    tactic: int) -> AotResult:
        defines = kernel_defines(spatial_scales, output_size, sampling_ratio, aligned, canonical_scale, level_eps,
                                 k=k, mode=clean_mode(mode))
        return _pool_aot(trt, trtp, CONTEXT_OP, (p2, p3, p4, p5, rois), outputs, defines, image_height,
                         image_width, arch)

    _REGISTERED_ARCH = arch
    return arch


# ----------------------------------------------------------------------------------------------------------------
# The plugins' PTX outside TensorRT (GPU checks and benchmarks)


class PTXPoolKernel:
    """Loads a plugin's exact PTX with the CUDA driver (cuda-python) and launches it as TensorRT would: one thread
    per output element, block ``BLOCK_SIZE``, arguments in ``pool_kernel.cuh`` order. Uses the calling thread's
    current CUDA context (e.g. torch's), else device 0's primary context."""

    def __init__(self, op: str, defines: Mapping[str, str] | None = None, arch: str = DEFAULT_ARCH,
                 feature_type: FeatureType = "f32") -> None:
        from cuda.bindings import driver

        self._driver = driver
        self.op = op
        self.context_op = op == CONTEXT_OP
        self.mode_concat = (defines or {}).get("RDDN_ATTR_MODE", "0") == "0"
        ptx = compile_ptx(op, defines, arch=arch)
        self._check(driver.cuInit(0), "cuInit")
        if not int(self._check(driver.cuCtxGetCurrent(), "cuCtxGetCurrent")):
            device = self._check(driver.cuDeviceGet(0), "cuDeviceGet")
            context = self._check(driver.cuDevicePrimaryCtxRetain(device), "cuDevicePrimaryCtxRetain")
            self._check(driver.cuCtxSetCurrent(context), "cuCtxSetCurrent")
        self._module = self._check(driver.cuModuleLoadData(ptx + b"\0"), "cuModuleLoadData")
        self._function = self._check(driver.cuModuleGetFunction(self._module, kernel_name(op, feature_type).encode()),
                                     "cuModuleGetFunction")

    def _check(self, result: Any, what: str) -> Any:
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self._driver.CUresult.CUDA_SUCCESS:
            raise RuntimeError(f"CUDA driver {what} failed: {err}")
        return values[0] if len(values) == 1 else None

    def launch(self, feature_ptrs: Sequence[int], feature_hw: Sequence[tuple[int, int]], channels: int,
               rois_ptr: int, num_rois: int, out_ptr: int, image_hw: tuple[int, int] = (0, 0),
               output_size: int = 7, stream: int = 0) -> None:
        """Launch on device pointers: 4 NCHW feature levels, float32 rois [R, 5], output [R, C_out, P, P]."""
        import ctypes

        if len(feature_ptrs) != 4 or len(feature_hw) != 4:
            raise ValueError("PTXPoolKernel.launch needs 4 feature levels (P2..P5)")
        ints = [num_rois, channels, *[v for hw in feature_hw for v in hw], image_hw[0], image_hw[1]]
        args = ([ctypes.c_void_p(int(p)) for p in feature_ptrs] + [ctypes.c_void_p(int(rois_ptr))]
                + [ctypes.c_int(int(v)) for v in ints] + [ctypes.c_void_p(int(out_ptr))])
        params = (ctypes.c_void_p * len(args))(*[ctypes.addressof(a) for a in args])
        out_channels = channels * (2 if self.context_op and self.mode_concat else 1)
        total = num_rois * out_channels * output_size * output_size
        grid = max(1, -(-total // BLOCK_SIZE))
        self._check(self._driver.cuLaunchKernel(self._function, grid, 1, 1, BLOCK_SIZE, 1, 1, 0, stream,
                                                ctypes.addressof(params), 0), "cuLaunchKernel")
