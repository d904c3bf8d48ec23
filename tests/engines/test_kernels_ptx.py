"""The CUDA kernels compile to PTX cleanly (warnings are errors) with nvcc and with NVRTC, no GPU needed.

The PTX entry signature is pinned against the AOT plugin's argument list (input pointers, int32 scalars, output
pointer): a mismatch would make TensorRT launch the kernel with garbage arguments.
"""
from __future__ import annotations

import re

import pytest

from engines import tensorrt_plugins as tp


def _nvrtc_available() -> bool:
    try:
        from cuda.bindings import nvrtc

        return nvrtc.nvrtcVersion()[0] == nvrtc.nvrtcResult.NVRTC_SUCCESS
    except Exception:  # ImportError, or the NVRTC library itself missing
        return False


COMPILERS = [
    pytest.param("nvcc", marks=pytest.mark.skipif(tp.find_nvcc() is None, reason="nvcc not installed (CUDA toolkit)")),
    pytest.param("nvrtc", marks=pytest.mark.skipif(not _nvrtc_available(),
                                                   reason="cuda-python NVRTC (cuda.bindings.nvrtc) not available")),
]


def _entry_params(ptx: str, name: str) -> list[str]:
    match = re.search(rf"\.entry {name}\((.*?)\)", ptx, re.S)
    assert match, f"entry {name} missing from PTX"
    return re.findall(r"\.param \.(\w+) ", match.group(1))


@pytest.mark.parametrize("compiler", COMPILERS)
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("op", [tp.MULTILEVEL_OP, tp.CONTEXT_OP])
def test_kernels_compile_cleanly_with_the_aot_signature(compiler: str, arch: str, op: str) -> None:
    defines = tp.kernel_defines((0.25, 0.125, 0.0625, 0.03125), 7, 2, 1, 56.0, 1e-6,
                                **({"k": 1.5, "mode": "concat"} if op == tp.CONTEXT_OP else {}))
    ptx = tp.compile_ptx(op, defines, arch=arch, compiler=compiler, use_cache=False).decode()
    assert f".target {arch}" in ptx
    for feature_type in ("f32", "f16"):
        params = _entry_params(ptx, tp.kernel_name(op, feature_type))
        # p2..p5 + rois, 12 int32 scalars (R, C, 4 x (H, W), image H, W), output
        assert params == ["u64"] * 5 + ["u32"] * 12 + ["u64"]
    assert "ld.local" not in ptx and "st.local" not in ptx, "level lookup spilled to local memory"
    assert "cvt.rn.f16.f32" in ptx  # FP16 output rounded once from the float accumulator


@pytest.mark.parametrize("compiler", COMPILERS)
def test_attributes_are_compiled_into_the_ptx(compiler: str) -> None:
    base = dict(spatial_scales=(0.25, 0.125, 0.0625, 0.03125), output_size=7, sampling_ratio=2, aligned=1,
                canonical_scale=56.0, level_eps=1e-6)
    k15 = tp.compile_ptx(tp.CONTEXT_OP, tp.kernel_defines(**base, k=1.5, mode="concat"), compiler=compiler,
                         use_cache=False).decode()
    k3 = tp.compile_ptx(tp.CONTEXT_OP, tp.kernel_defines(**base, k=3.0, mode="concat"), compiler=compiler,
                        use_cache=False).decode()
    # 0.5 * k is folded: 0.75 (0f3F400000) for k=1.5, 1.5 (0f3FC00000) for k=3
    assert "0f3F400000" in k15 and "0f3F400000" not in k3 and "0f3FC00000" in k3


def test_float_defines_are_exact_float32() -> None:
    defines = tp.kernel_defines((0.25, 0.125, 0.0625, 0.03125), 7, 2, True, 56.0, 1e-6, k=1.5, mode="context_only")
    assert float.fromhex(defines["RDDN_ATTR_LEVEL_EPS"].rstrip("f")) == pytest.approx(1e-6, rel=1e-7)
    assert defines["RDDN_ATTR_MODE"] == "1" and defines["RDDN_ATTR_ALIGNED"] == "1"
    assert defines["RDDN_ATTR_NUM_LEVELS"] == "4"
    with pytest.raises(ValueError, match="mode"):
        tp.kernel_defines((0.25,), 7, 2, 1, 56.0, 1e-6, mode="stacked")
    with pytest.raises(ValueError, match="unknown op"):
        tp.compile_ptx("RoIPool")


def test_string_attributes_as_tensorrt_hands_them_over() -> None:
    assert tp.clean_mode(b"concat\x00") == "concat"
    assert tp.clean_mode("context_only") == "context_only"


@pytest.mark.skipif(tp.find_nvcc() is None or not _nvrtc_available(), reason="needs both nvcc and NVRTC")
def test_nvcc_and_nvrtc_agree_on_entry_points() -> None:
    a = tp.compile_ptx(tp.MULTILEVEL_OP, compiler="nvcc", use_cache=False).decode()
    b = tp.compile_ptx(tp.MULTILEVEL_OP, compiler="nvrtc", use_cache=False).decode()
    assert re.findall(r"\.entry (\w+)", a) == re.findall(r"\.entry (\w+)", b)


@pytest.mark.skipif(not _nvrtc_available(), reason="cuda-python NVRTC (cuda.bindings.nvrtc) not available")
def test_nvrtc_compile_leaves_the_interpreter_intact() -> None:
    """NVRTC writes its log/PTX into our buffers: they must be private, never CPython's interned bytes.

    Regression: ``b" " * size`` with size 1 (an empty log) handed CPython's shared ``b" "`` to NVRTC, which
    overwrote it with NUL; every later ``torch.save`` in the process then wrote unreadable checkpoints.
    """
    import io

    import torch

    tp.compile_ptx(tp.MULTILEVEL_OP, compiler="nvrtc", use_cache=False)
    assert b" " == bytes([32])
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(4, 8)}, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer, weights_only=True)["w"], torch.ones(4, 8))
