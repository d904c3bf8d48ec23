"""INT8 by static quantisation: ONNX Runtime's quantiser writes a QDQ graph from calibration frames.

The FP32 artifact graph is first pre-processed (``quant_pre_process``: shape inference + ONNX Runtime's basic
graph optimisations, which fold the frozen BN's Mul/Add into the convolutions so the quantiser sees the
convolutions that will actually run). ``quantize_static`` then inserts QuantizeLinear/DequantizeLinear pairs
around the chosen nodes, with ranges calibrated on training frames (``engines.calibration``):

- weights int8 per output channel, symmetric, 7-bit range (``reduce_range``): ONNX Runtime's u8s8 kernels on x86
  CPUs without VNNI (this build machine: AVX2 only) use VPMADDUBSW, whose 16-bit intermediate sums saturate
  with full-range weights; 7-bit weights avoid that and cost little accuracy on VNNI CPUs;
- activations uint8 per tensor, asymmetric (ONNX Runtime's fast CPU path);
- only convolutions and fully connected layers (Conv, Gemm, MatMul) of the parts named in ``scope``.
  Everything between them (RoIAlign, box decoding, anchors, score filter, NMS, top-k) stays FP32 by
  construction, and any part left out of ``scope`` (e.g. the box predictor that regresses the final boxes)
  runs its layers in FP32 too.

Both CPU runtimes run the result: ONNX Runtime fuses DQ -> Conv -> Q into QLinearConv; OpenVINO reads the
Q/DQ pairs as FakeQuantize and runs the quantised layers in int8 (``engines.openvino_ir`` writes it as IR).
"""
from __future__ import annotations

import itertools
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from engines.artifact import CalibrationSet, Quantization

#: Model parts whose Conv/Gemm layers may be quantised, as they appear in the exported graph's node names.
SCOPE_PATTERNS = {
    "backbone": r"/model/(backbone|template_fusion|ptg)/",
    "fpn": r"/model/fpn/",
    "rpn": r"/model/rpn/",
    "box_head": r"/model/stages\.\d+/box_head/",
    "box_predictor": r"/model/stages\.\d+/box_predictor/",
}
SCOPES = tuple(SCOPE_PATTERNS)
#: Measured on the DeepPCB TR-Inter model (benchmarks/results/cpu_inference.md): quantising the box predictor
#: (class scores + box regression, ~0 % of the time) buys nothing and is the most sensitive layer.
DEFAULT_SCOPE = ("backbone", "fpn", "rpn", "box_head")
QUANTIZED_OP_TYPES = ("Conv", "Gemm", "MatMul")
METHODS = ("minmax", "percentile", "entropy")
DEFAULT_METHOD = "minmax"
#: Frames per calibrator pass. The histogram calibrators (percentile, entropy) hold every calibrated tensor of
#: every frame of a pass until it is binned, GiBs at 640 px for a whole set; passes of this many frames bound
#: that, and the calibrators merge ranges/histograms across passes. (ONNX Runtime's own bound,
#: CalibMaxIntermediateOutputs, drops the MinMax data it collected instead of merging it, as of 1.32.)
FRAMES_PER_PASS = 8


def select_nodes(node_names_and_types: Iterable[tuple[str, str]], scope: Sequence[str]) -> list[str]:
    """Names of the Conv/Gemm/MatMul nodes that belong to the model parts in ``scope``."""
    unknown = set(scope) - set(SCOPE_PATTERNS)
    if unknown:
        raise ValueError(f"unknown INT8 scope part(s) {sorted(unknown)} (choose from {', '.join(SCOPES)})")
    pattern = re.compile("|".join(SCOPE_PATTERNS[s] for s in scope)) if scope else None
    return [name for name, op in node_names_and_types
            if pattern is not None and op in QUANTIZED_OP_TYPES and pattern.search(name)]


def quantize_qdq(fp32_onnx: Path, out_onnx: Path, feeds: Callable[[], Iterator[dict[str, np.ndarray]]],
                 calibration: CalibrationSet, *, scope: Sequence[str] = DEFAULT_SCOPE,
                 method: str = DEFAULT_METHOD) -> Quantization:
    """Write the INT8 QDQ graph of ``fp32_onnx`` to ``out_onnx``; ``feeds()`` yields the calibration feeds."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in METHODS:
        raise ValueError(f"--calibration-method must be one of {', '.join(METHODS)}, got {method!r}")
    calibrate_method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                        "entropy": CalibrationMethod.Entropy}[method]
    with tempfile.TemporaryDirectory(prefix="rddn-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        # symbolic shape inference cannot follow the data-dependent shapes after NonZero (the pooler's level
        # routing); ONNX shape inference and the graph optimisations are what the quantiser needs
        quant_pre_process(str(fp32_onnx), str(prepared), skip_symbolic_shape=True)
        graph = onnx.load(str(prepared), load_external_data=False).graph
        nodes = select_nodes(((n.name, n.op_type) for n in graph.node), scope)
        if not nodes:
            raise ValueError(f"INT8 scope {list(scope)} selects no Conv/Gemm node in {fp32_onnx}")
        cache = Path(tmp) / "ranges.json"
        calibrate(prepared, Path(tmp) / "augmented.onnx", feeds(), calibrate_method, cache)
        quantize_static(
            str(prepared), str(out_onnx), None, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(QUANTIZED_OP_TYPES), nodes_to_quantize=nodes, per_channel=True,
            reduce_range=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=calibrate_method, calibration_cache_path=str(cache),
        )
    quantized = quantized_node_types(out_onnx)
    return Quantization(
        tool=f"onnxruntime.quantization {onnxruntime.__version__}", method=method, format="QDQ",
        activations="uint8 per-tensor asymmetric", weights="int8 per-channel symmetric, 7-bit range",
        quantized_ops=[f"{op} x{count}" for op, count in sorted(quantized.items())], fp32_scopes=[s for s in SCOPES if s not in scope] + ["roi_align", "nms"],
        calibration=calibration,
    )


def calibrate(prepared: Path, augmented: Path, feeds: Iterator[dict[str, np.ndarray]], calibrate_method: Any,
              cache: Path) -> int:
    """Collect activation ranges over ``feeds`` in passes of FRAMES_PER_PASS frames and save them where
    ``quantize_static(calibration_cache_path=...)`` reads them; returns the number of frames seen."""
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization.calibrate import create_calibrator, save_tensors_data

    class Pass(CalibrationDataReader):
        def __init__(self, frames: list[dict[str, np.ndarray]]) -> None:
            self._frames = iter(frames)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._frames, None)

    calibrator = create_calibrator(prepared, list(QUANTIZED_OP_TYPES), augmented_model_path=str(augmented),
                                   calibrate_method=calibrate_method)
    seen = 0
    while chunk := list(itertools.islice(feeds, FRAMES_PER_PASS)):
        calibrator.collect_data(Pass(chunk))
        seen += len(chunk)
    if not seen:
        raise ValueError("no calibration frames")
    save_tensors_data(calibrator.compute_data(), cache)
    return seen


def quantized_node_types(path: Path) -> dict[str, int]:
    """Op type -> number of nodes that take a dequantised weight (i.e. that run in int8)."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    dequantized = {out for n in graph.node if n.op_type == "DequantizeLinear" for out in n.output}
    initializers = {i.name for i in graph.initializer}
    weight_dq = {n.output[0] for n in graph.node
                 if n.op_type == "DequantizeLinear" and n.input and n.input[0] in initializers}
    counts: dict[str, int] = {}
    for node in graph.node:
        if node.op_type in QUANTIZED_OP_TYPES and any(i in weight_dq for i in node.input) \
                and any(i in dequantized for i in node.input):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts
