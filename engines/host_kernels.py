"""The CUDA kernels' pooling core built for the host CPU: how CI checks the GPU code without a GPU.

``engines/kernels/roi_align_core.h`` is ``__host__ __device__`` code; ``host_entry.cpp`` loops over it on the
CPU. This module compiles that pair with the system C++ compiler into a shared library (cached by the hash of
the sources and flags, so a test run compiles once), loads it with ctypes and offers a numpy in/out API with the
same inputs and attributes as the ``rddn::MultiLevelRoIAlign`` / ``rddn::ContextRoIAlign`` ONNX nodes.
No torch here: the daemon-side tools can use it too.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Sequence

import numpy as np

KERNEL_DIR = Path(__file__).resolve().parent / "kernels"
CORE_HEADER = KERNEL_DIR / "roi_align_core.h"
HOST_SOURCES: tuple[Path, ...] = (CORE_HEADER, KERNEL_DIR / "host_entry.cpp")
HOST_FLAGS: tuple[str, ...] = ("-O2", "-shared", "-fPIC", "-std=c++17", "-Wall", "-Wextra", "-Werror")
MAX_LEVELS = 4
ABI_VERSION = 1

ContextMode = Literal["concat", "context_only"]
_MODES: dict[str, int] = {"concat": 0, "context_only": 1}


class HostKernelError(RuntimeError):
    """The host library could not be built or was called with inconsistent inputs."""


class _PoolingParams(ctypes.Structure):
    """ctypes mirror of ``rddn::PoolingParams`` (field order and types must match the header)."""

    _fields_ = [
        ("output_size", ctypes.c_int),
        ("sampling_ratio", ctypes.c_int),
        ("aligned", ctypes.c_int),
        ("num_levels", ctypes.c_int),
        ("spatial_scales", ctypes.c_float * MAX_LEVELS),
        ("canonical_scale", ctypes.c_float),
        ("level_eps", ctypes.c_float),
        ("k", ctypes.c_float),
        ("image_height", ctypes.c_float),
        ("image_width", ctypes.c_float),
        ("mode", ctypes.c_int),
    ]


@dataclass(frozen=True)
class PoolingAttributes:
    """The pooling switches: the ONNX node attributes of the custom ops, defaults from ``roi_semantics``."""

    spatial_scales: tuple[float, ...] = (0.25, 0.125, 0.0625, 0.03125)
    output_size: int = 7
    sampling_ratio: int = 2
    aligned: bool = True
    canonical_scale: float = 56.0
    level_eps: float = 1e-6
    k: float = 1.5
    image_height: int = 0
    image_width: int = 0
    mode: ContextMode = "concat"

    def to_struct(self) -> _PoolingParams:
        if not 1 <= len(self.spatial_scales) <= MAX_LEVELS:
            raise HostKernelError(f"spatial_scales needs 1..{MAX_LEVELS} values, got {self.spatial_scales}")
        if self.mode not in _MODES:
            raise HostKernelError(f"mode must be one of {sorted(_MODES)}, got {self.mode!r}")
        if self.output_size < 1:
            raise HostKernelError(f"output_size must be >= 1, got {self.output_size}")
        scales = list(self.spatial_scales) + [0.0] * (MAX_LEVELS - len(self.spatial_scales))
        return _PoolingParams(
            output_size=self.output_size,
            sampling_ratio=self.sampling_ratio,
            aligned=int(self.aligned),
            num_levels=len(self.spatial_scales),
            spatial_scales=(ctypes.c_float * MAX_LEVELS)(*scales),
            canonical_scale=self.canonical_scale,
            level_eps=self.level_eps,
            k=self.k,
            image_height=float(self.image_height),
            image_width=float(self.image_width),
            mode=_MODES[self.mode],
        )


def default_attributes(image_size: tuple[int, int] = (0, 0), **overrides: object) -> PoolingAttributes:
    """Attributes from ``training.model.roi_semantics`` (the one definition) when it imports, else the defaults."""
    values: dict[str, object] = {}
    try:
        from training.model import roi_semantics as rs
    except ImportError:  # daemon-only install: the defaults above are the same constants
        pass
    else:
        values = dict(
            spatial_scales=tuple(rs.ROI_ALIGN.spatial_scales),
            output_size=rs.ROI_ALIGN.output_size,
            sampling_ratio=rs.ROI_ALIGN.sampling_ratio,
            aligned=rs.ROI_ALIGN.aligned,
            canonical_scale=rs.CANONICAL_SCALE,
            level_eps=rs.LEVEL_EPS,
            k=rs.CONTEXT_SCALE,
        )
    values.update(image_height=int(image_size[0]), image_width=int(image_size[1]))
    values.update(overrides)
    return PoolingAttributes(**values)  # type: ignore[arg-type]


def _cache_dir() -> Path:
    """``$RDDN_CACHE_DIR``, else ``~/.cache/rddn`` when writable, else the temp dir."""
    env = os.environ.get("RDDN_CACHE_DIR")
    candidates = [Path(env)] if env else []
    candidates += [Path.home() / ".cache" / "rddn", Path(tempfile.gettempdir()) / "rddn-cache"]
    for candidate in candidates:
        try:
            (candidate / "host_kernels").mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(candidate / "host_kernels", os.W_OK):
            return candidate / "host_kernels"
    raise HostKernelError(f"no writable cache directory among {[str(c) for c in candidates]}")


def source_hash(compiler: str, flags: Sequence[str] = HOST_FLAGS) -> str:
    """Hash of the kernel sources, compiler and flags: the cache key of the built library."""
    digest = hashlib.sha256()
    for path in HOST_SOURCES:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(compiler.encode())
    digest.update(" ".join(flags).encode())
    return digest.hexdigest()[:16]


def find_compiler() -> str:
    """The C++ compiler: ``$CXX``, else g++, else c++, else clang++."""
    for name in [os.environ.get("CXX"), "g++", "c++", "clang++"]:
        if name and (path := shutil.which(name)):
            return path
    raise HostKernelError("no C++ compiler found ($CXX, g++, c++, clang++): cannot build the host kernels")


def build_library(force: bool = False) -> Path:
    """Compile ``host_entry.cpp`` (cached by source hash) and return the shared library's path."""
    compiler = find_compiler()
    target = _cache_dir() / f"rddn_host_{source_hash(compiler)}.so"
    if target.is_file() and not force:
        return target
    # Build into a unique temp name then rename: parallel test workers never load a half-written library.
    fd, tmp_name = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [compiler, *HOST_FLAGS, f"-I{KERNEL_DIR}", "-o", tmp_name, str(KERNEL_DIR / "host_entry.cpp")]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        Path(tmp_name).unlink(missing_ok=True)
        raise HostKernelError(f"host kernel build failed: {' '.join(cmd)}\n{result.stderr}")
    os.replace(tmp_name, target)
    return target


_LIBRARY: ctypes.CDLL | None = None


def load_library() -> ctypes.CDLL:
    """Build (once) and load the host library, with argument types declared."""
    global _LIBRARY
    if _LIBRARY is not None:
        return _LIBRARY
    lib = ctypes.CDLL(str(build_library()))
    ptr_array = ctypes.POINTER(ctypes.c_void_p)
    int_ptr = ctypes.POINTER(ctypes.c_int)
    params_ptr = ctypes.POINTER(_PoolingParams)
    for name in ("rddn_pool_f32", "rddn_pool_f16"):
        fn = getattr(lib, name)
        fn.argtypes = [ptr_array, int_ptr, int_ptr, ctypes.c_int, ctypes.c_void_p, ctypes.c_long, params_ptr,
                       ctypes.c_int, ctypes.c_void_p]
        fn.restype = ctypes.c_int
    box = [ctypes.c_float] * 4
    lib.rddn_map_roi_level.argtypes = [*box, params_ptr]
    lib.rddn_map_roi_level.restype = ctypes.c_int
    lib.rddn_context_box.argtypes = [*box, params_ptr, ctypes.POINTER(ctypes.c_float)]
    lib.rddn_context_box.restype = None
    lib.rddn_abi_version.restype = ctypes.c_int
    if lib.rddn_abi_version() != ABI_VERSION:
        raise HostKernelError(f"host kernel ABI {lib.rddn_abi_version()} != expected {ABI_VERSION}")
    _LIBRARY = lib
    return lib


def _check_inputs(features: Sequence[np.ndarray], rois: np.ndarray, attrs: PoolingAttributes) -> np.dtype:
    if len(features) != len(attrs.spatial_scales):
        raise HostKernelError(
            f"{len(features)} feature levels given but spatial_scales has {len(attrs.spatial_scales)} values"
        )
    dtype = features[0].dtype
    if dtype not in (np.float32, np.float16):
        raise HostKernelError(f"features must be float32 or float16, got {dtype}")
    batch, channels = features[0].shape[:2]
    for level, feat in enumerate(features):
        if feat.ndim != 4 or feat.shape[:2] != (batch, channels) or feat.dtype != dtype:
            raise HostKernelError(
                f"feature level {level}: expected [{batch}, {channels}, H, W] {dtype}, got {feat.shape} {feat.dtype}"
            )
    if rois.ndim != 2 or rois.shape[1] != 5 or rois.dtype != np.float32:
        raise HostKernelError(f"rois must be float32 [R, 5] (batch, x1, y1, x2, y2), got {rois.shape} {rois.dtype}")
    if len(rois) and (rois[:, 0].min() < 0 or rois[:, 0].max() >= batch):
        raise HostKernelError(f"rois batch index outside [0, {batch}): {np.unique(rois[:, 0]).tolist()}")
    return dtype


def pool(
    features: Sequence[np.ndarray], rois: np.ndarray, attrs: PoolingAttributes, context: bool = False
) -> np.ndarray:
    """Run the host build of the kernels.

    features: per-level NCHW arrays (float32 or float16, all the same dtype); rois: float32 [R, 5]
    (batch, x1, y1, x2, y2) in input pixels. Returns [R, C, P, P] (multi-level), or with ``context`` [R, 2C, P, P]
    (concat) / [R, C, P, P] (context_only), in the features' dtype.
    """
    dtype = _check_inputs(features, rois, attrs)
    if context and (attrs.image_height <= 0 or attrs.image_width <= 0):
        raise HostKernelError(
            f"context pooling needs the image size to clip to, got image_height={attrs.image_height} "
            f"image_width={attrs.image_width}"
        )
    feats = [np.ascontiguousarray(f) for f in features]
    rois_c = np.ascontiguousarray(rois)
    channels = feats[0].shape[1]
    out_channels = 2 * channels if context and attrs.mode == "concat" else channels
    out = np.zeros((len(rois_c), out_channels, attrs.output_size, attrs.output_size), dtype=dtype)
    n = len(feats)
    pointers = (ctypes.c_void_p * n)(*[f.ctypes.data for f in feats])
    heights = (ctypes.c_int * n)(*[f.shape[2] for f in feats])
    widths = (ctypes.c_int * n)(*[f.shape[3] for f in feats])
    params = attrs.to_struct()
    lib = load_library()
    fn = lib.rddn_pool_f32 if dtype == np.float32 else lib.rddn_pool_f16
    code = fn(pointers, heights, widths, channels, rois_c.ctypes.data, len(rois_c), ctypes.byref(params),
              int(context), out.ctypes.data)
    if code != 0:
        raise HostKernelError(f"host kernel rejected its arguments (code {code}): attributes {attrs}")
    return out


def multilevel_roi_align(features: Sequence[np.ndarray], rois: np.ndarray, attrs: PoolingAttributes) -> np.ndarray:
    """``rddn::MultiLevelRoIAlign`` on the host: each RoI pooled from its own FPN level."""
    return pool(features, rois, attrs, context=False)


def context_roi_align(features: Sequence[np.ndarray], rois: np.ndarray, attrs: PoolingAttributes) -> np.ndarray:
    """``rddn::ContextRoIAlign`` on the host: the RoI and its clipped context box from the RoI's level."""
    return pool(features, rois, attrs, context=True)


def map_roi_level(box: Sequence[float], attrs: PoolingAttributes) -> int:
    """The core's level mapping for one box (x1, y1, x2, y2)."""
    params = attrs.to_struct()
    return int(load_library().rddn_map_roi_level(*[float(v) for v in box], ctypes.byref(params)))


def context_box(box: Sequence[float], attrs: PoolingAttributes) -> tuple[float, float, float, float]:
    """The core's clipped context box for one box (x1, y1, x2, y2)."""
    params = attrs.to_struct()
    out = (ctypes.c_float * 4)()
    load_library().rddn_context_box(*[float(v) for v in box], ctypes.byref(params), out)
    return (out[0], out[1], out[2], out[3])
