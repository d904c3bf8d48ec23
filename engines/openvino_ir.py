"""ONNX -> OpenVINO IR (``rddn compile --target openvino``) and an OpenVINO runner for the compile-time checks.

The IR is converted from the artifact's standard-ONNX graph (``ov.convert_model``) and saved with its weights
kept in FP32 (``compress_to_fp16=False``: ``ov.save_model`` would otherwise halve them to FP16 by default,
which the validated PyTorch parity does not cover). An INT8 QDQ graph converts to an IR whose FakeQuantize
nodes OpenVINO's CPU plugin runs in int8.

OpenVINO's ONNX frontend has no conversion rule for ONNX ``DeformConv`` (the -DCN backbones, opset 19);
:func:`onnx_frontend_extensions` maps it onto OpenVINO's own DeformableConvolution (offsets as (y, x) pairs per
kernel tap, bilinear sampling with zero padding: torchvision's ``deform_conv2d``). Torch-free: the daemon's
openvino backend uses it too when it reads an ONNX artifact directly.
"""
from __future__ import annotations

import ctypes
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from engines.artifact import OpenVINOInfo, sha256_file

WEIGHTS_SUFFIX = ".bin"


class _SignalStack(ctypes.Structure):  # stack_t of <signal.h> (Linux)
    _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]


def signal_stack() -> tuple[int, int, int] | None:
    """The calling thread's alternate signal stack as (address, flags, size); None where it cannot be read."""
    if not sys.platform.startswith("linux"):
        return None
    current = _SignalStack()
    if ctypes.CDLL(None, use_errno=True).sigaltstack(None, ctypes.byref(current)) != 0:
        return None
    return current.ss_sp or 0, current.ss_flags, current.ss_size


@contextmanager
def signal_stack_kept() -> Iterator[None]:
    """Run OpenVINO code that creates or drops a CPU plugin with the calling thread's alternate signal stack put
    back afterwards.

    OpenVINO's CPU plugin installs a signal stack of its own (a buffer it frees when it is destroyed) on the thread
    that first compiles a model, and puts back the stack it saved when it is destroyed: on whichever thread drops
    the last reference, in whatever order plugins die. After a reload (a new backend compiled before the old one
    is closed), or a close on another thread, a thread's signal stack is left pointing at freed memory, and the
    next signal with a Python handler (SIGTERM, SIGHUP, SIGCHLD) kills the process with a SIGSEGV the kernel
    raises while building the signal frame (no traceback: faulthandler's own handler needs the same stack).
    """
    saved = signal_stack()
    try:
        yield
    finally:
        if saved is not None and signal_stack() != saved:
            address, flags, size = saved
            stack = _SignalStack(address or None, flags, size)
            ctypes.CDLL(None, use_errno=True).sigaltstack(ctypes.byref(stack), None)


def onnx_frontend_extensions() -> list:
    """Conversion rules OpenVINO's ONNX frontend lacks for graphs ``rddn compile`` writes (ONNX DeformConv)."""
    import openvino.opset8 as ops
    from openvino.frontend.onnx import ConversionExtension

    def deform_conv(node):  # inputs X, W, offset[, B[, mask]]; attributes as ONNX DeformConv-19
        count = node.get_input_size()
        pads = list(node.get_attribute("pads", [0, 0, 0, 0]))
        half = len(pads) // 2
        out = ops.deformable_convolution(
            node.get_input(0), node.get_input(2), node.get_input(1), list(node.get_attribute("strides", [1, 1])),
            pads[:half], pads[half:], list(node.get_attribute("dilations", [1, 1])),
            mask=node.get_input(4) if count > 4 else None, auto_pad="explicit",
            group=int(node.get_attribute("group", 1)), deformable_group=int(node.get_attribute("offset_group", 1)),
            bilinear_interpolation_pad=True)
        if count > 3:
            shape = ops.constant(np.array([1, -1, 1, 1], dtype=np.int64))
            out = ops.add(out, ops.reshape(node.get_input(3), shape, special_zero=False))
        return [out.output(0)]

    return [ConversionExtension("DeformConv", deform_conv)]


def core():
    """An OpenVINO Core that reads every graph ``rddn compile`` writes."""
    import openvino as ov

    instance = ov.Core()
    for extension in onnx_frontend_extensions():
        instance.add_extension(extension)
    return instance


def convert_to_ir(onnx_path: Path, xml_path: Path) -> OpenVINOInfo:
    """Write ``xml_path`` (+ ``.bin``) from ``onnx_path``; returns the metadata section describing the IR."""
    import openvino as ov

    model = ov.convert_model(str(onnx_path), extension=onnx_frontend_extensions())
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    weights = xml_path.with_suffix(WEIGHTS_SUFFIX)
    return OpenVINOInfo(version=ov.get_version(), weights_file=weights.name, weights_sha256=sha256_file(weights))


def compile_cpu(model_path: Path, threads: int = 1):
    """The CPU compiled model the daemon's backend would run (f32 inference precision, latency hint)."""
    return core().compile_model(str(model_path), "CPU", {
        "PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": int(threads)})


def run_openvino(model_path: Path, feeds: Mapping[str, np.ndarray], output_names: Sequence[str],
                 threads: int = 1) -> list[np.ndarray]:
    """One run of an IR (``.xml``) or ONNX file on OpenVINO's CPU plugin; outputs in ``output_names`` order."""
    with signal_stack_kept():
        compiled = compile_cpu(model_path, threads)
        request = compiled.create_infer_request()
        request.infer(dict(feeds))
        outputs = [np.array(request.get_tensor(name).data, copy=True) for name in output_names]
        del request, compiled  # the plugin dies here, inside the guard
    return outputs
