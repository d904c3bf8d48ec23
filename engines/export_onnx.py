"""RDDN -> ONNX: the export module, the exporter call, graph checks and the eager-vs-ONNX parity measure.

The artifact's graph (contract in ``engines/artifact.py``) takes ``image`` (and ``template``) [N, 3, H, W]
float32 0..255 at a fixed size and returns ``boxes`` [N, D, 4], ``scores`` [N, D], ``labels`` [N, D] (0-based)
and ``num_detections`` [N], D = ``max_detections``; normalisation (mean/std or TR-Pre), NMS, the score filter and
top-D all run inside the graph.

Exporter: torch's TorchScript-based exporter (``dynamo=False``). The torch.export path (``dynamo=True``) stops
at the first data-dependent size guard, and detection post-processing is full of them (torchvision's
``batched_nms`` checks ``boxes.numel() == 0``); tracing records those sizes as graph shapes instead, and
torchvision registers the ONNX forms of ``roi_align`` (RoiAlign, ``half_pixel`` for aligned=True, opset >= 16)
and ``nms`` (NonMaxSuppression; batched NMS through the coordinate-offset trick when tracing).

What tracing cannot get right by itself, fixed here on a private copy of the model (training code untouched):
- **fixed proposal count** (:class:`FixedCountProposals`): the RPN keeps *up to* K proposals, and the RoI heads
  split per-image/per-RoI tensors with Python ints taken from those sizes; a trace bakes them in, so a frame with
  a different count would fail at run time. The export RPN pads its output to exactly K with zero-area boxes,
  which can never become detections (their decoded boxes keep zero width and are dropped by the head's
  ``remove_small_boxes``), so results are unchanged and every size after the RPN is static.
- the ONNX Runtime graph uses the model's own pooler (level routing with NonZero/RoiAlign/ScatterND, valid to
  trace once the proposal count is fixed);
- for ``roi_ops="rddn"`` (TensorRT variant) :class:`PluginRoIFeaturePooler` replaces it with the ``rddn`` custom
  ops of :mod:`engines.custom_ops`, and ``precision="fp16"`` applies :func:`apply_fp16`: FP16 convolutions and
  FC layers, FP32 boxes, anchors, softmax and NMS, every cast an explicit node (strongly typed TensorRT).
- the -DCN backbone: torchvision's ``deform_conv2d`` gets a symbolic to ONNX DeformConv (opset 19).
- batched NMS without the empty-input branch (:func:`batched_nms_for_export`, standard-ONNX graphs): torchvision
  scripts an ``If`` (no boxes -> empty constant) into the graph, and OpenVINO 2026.4 returns that empty
  constant as one element, so a frame without detections came back with ``num_detections`` 1 and a garbage
  box. Without the branch, NonMaxSuppression on zero boxes gives zero in every runtime.

Batch: the trace unrolls the model's per-image loops, so the graph's batch dimension is static
(``ExportSpec.batch_size``, default 1); a backend feeding more frames runs the graph once per frame or batch.
"""
from __future__ import annotations

import copy
import io
import warnings
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torchvision.ops import DeformConv2d

from training.model.config import ModelConfig
from training.model.roi_pooling import RoIFeaturePooler

#: RoiAlign's ``coordinate_transformation_mode=half_pixel`` (aligned=True) needs opset 16; 17 is what
#: TensorRT >= 10.11 and ONNX Runtime >= 1.17 both parse fully.
DEFAULT_OPSET = 17
INPUT_NAMES = ("image", "template")
OUTPUT_NAMES = ("boxes", "scores", "labels", "num_detections")
#: ONNX DeformConv (the -DCN backbone) exists from opset 19: DCN models export at max(opset, 19).
DEFORM_CONV_OPSET = 19


@dataclass(frozen=True)
class ExportSpec:
    """How to export: graph input size, batch, TR-Post compiled in or not, RoI op flavour, precision, opset."""

    input_size: tuple[int, int]
    tr_post: bool = False
    roi_ops: Literal["onnx", "rddn"] = "onnx"
    precision: Literal["fp32", "fp16"] = "fp32"
    opset: int = DEFAULT_OPSET
    batch_size: int = 1

    def __post_init__(self) -> None:
        height, width = self.input_size
        if height % 32 or width % 32 or height <= 0 or width <= 0:
            raise ValueError(f"ExportSpec.input_size {self.input_size}: H and W must be positive multiples of 32")
        if self.roi_ops == "onnx" and self.precision != "fp32":
            raise ValueError("the standard-ONNX (ONNX Runtime) export is fp32; fp16 is for roi_ops='rddn'")
        if self.opset < 16:
            raise ValueError(f"opset {self.opset} < 16: RoiAlign has no half_pixel (aligned=True) mode before 16")
        if self.batch_size < 1:
            raise ValueError(f"ExportSpec.batch_size must be >= 1, got {self.batch_size}")


# --------------------------------------------------------------------------------------------- the model copy
def config_for_export(config: ModelConfig, test_proposals: int | None = None) -> ModelConfig:
    """The model config with the inference proposal count overridden (``rddn compile --test-proposals``)."""
    if test_proposals is None:
        return config
    rpn = config.rpn.model_copy(update={"post_nms_top_n_test": int(test_proposals)})
    return ModelConfig.model_validate({**config.model_dump(mode="python"), "rpn": rpn.model_dump(mode="python")})


def model_for_export(payload: Mapping[str, Any], test_proposals: int | None = None) -> nn.Module:
    """The RDDN a checkpoint payload (contract 2) describes, weights loaded, eval mode, proposals overridden."""
    from training.engine.checkpoint import model_config_from_checkpoint
    from training.model import build_model

    config = config_for_export(model_config_from_checkpoint(payload), test_proposals)
    # the checkpoint holds every weight: the pretrained files named in the config need not exist here
    model = build_model(config, load_pretrained=False)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as exc:
        raise ValueError(f"checkpoint weights do not match the model its config builds: {exc}") from exc
    return model.eval()


class FixedCountProposals(nn.Module):
    """Marker base for the export RPN (see :func:`fixed_count_rpn`)."""


def fixed_count_rpn(rpn: nn.Module) -> nn.Module:
    """Make ``rpn`` (torchvision's RegionProposalNetwork) return exactly ``post_nms_top_n()`` proposals per image.

    Padding rows are zero-area boxes at the origin: RoIAlign pools them harmlessly, their decoded boxes stay
    zero-area through every cascade stage, and the RoI head's ``remove_small_boxes`` drops them, so detections
    are exactly those of the unpadded model. The class is swapped on this (copied) instance only.
    """
    base = type(rpn)

    class _FixedCountRPN(base, FixedCountProposals):  # type: ignore[misc, valid-type]
        def filter_proposals(self, *args: Any, **kwargs: Any):  # noqa: D401 - torchvision's signature
            boxes, scores = base.filter_proposals(self, *args, **kwargs)
            count = int(self.post_nms_top_n())
            return [_pad_rows(b, count) for b in boxes], [_pad_rows(s, count) for s in scores]

    rpn.__class__ = _FixedCountRPN
    return rpn


def _pad_rows(x: Tensor, count: int, value: float = 0.0) -> Tensor:
    """First ``count`` rows of ``x`` padded with ``value``; trace-safe (the result's size is static)."""
    pad = torch.full((count,) + tuple(x.shape[1:]), value, dtype=x.dtype, device=x.device)
    return torch.cat((x, pad), dim=0)[:count]


# ------------------------------------------------------------------------------------------------ RoI pooling
class PluginRoIFeaturePooler(RoIFeaturePooler):
    """The model's pooler (same context modes and ``roi_semantics``) as ``rddn`` plugin nodes (TensorRT variant):
    one MultiLevelRoIAlign / ContextRoIAlign node per pooling, features in the export precision (FP16 for
    ``precision="fp16"``, an explicit Cast), RoI boxes always FP32."""

    def __init__(self, context: str, k: float, precision: str = "fp32") -> None:
        super().__init__(context, k)  # type: ignore[arg-type]
        self.precision = precision

    def forward(self, features: Sequence[Tensor], rois: Tensor, image_sizes: Tensor) -> Tensor:
        from engines import custom_ops  # the kernels engineer's torch custom ops (export as rddn:: nodes)

        dtype = torch.float16 if self.precision == "fp16" else torch.float32
        feats = [f.to(dtype) for f in features]
        rois = rois.float()
        if self.context == "none":
            return custom_ops.multilevel_roi_align(feats, rois)
        height, width = (int(v) for v in image_sizes[0])  # fixed graph input size: a node attribute
        return custom_ops.context_roi_align(feats, rois, image_height=height, image_width=width, k=float(self.k),
                                            mode=self.context)  # type: ignore[arg-type]


def swap_poolers(model: nn.Module, precision: str) -> int:
    """Replace every RoIFeaturePooler in ``model`` (a copy) with the plugin-node pooler; returns how many."""
    count = 0
    for module in model.modules():
        pooler = getattr(module, "pooler", None)
        if isinstance(pooler, RoIFeaturePooler) and not isinstance(pooler, PluginRoIFeaturePooler):
            module.pooler = PluginRoIFeaturePooler(pooler.context, pooler.k, precision)
            count += 1
    return count


# ------------------------------------------------------------------------------------------------ FP16 plan
class CastIO(nn.Module):
    """Run ``module`` in ``dtype``: tensor inputs (also inside lists) are cast in, outputs cast to ``out_dtype``
    (None: left in ``dtype``). Each cast is an explicit Cast node in the ONNX, which is what a strongly typed
    TensorRT network (TensorRT 11: no FP16 builder flag) builds its precision from."""

    def __init__(self, module: nn.Module, dtype: torch.dtype, out_dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.module = module.to(dtype)
        self.dtype = dtype
        self.out_dtype = out_dtype

    def forward(self, *args: Any) -> Any:
        out = self.module(*(_cast(a, self.dtype) for a in args))
        return out if self.out_dtype is None else _cast(out, self.out_dtype)

    def __getattr__(self, name: str) -> Any:  # keep the wrapped module's plain attributes (e.g. out_channels)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("module"), name)


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, dtype) for v in value)
    return value


class FloatAnchors(nn.Module):
    """torchvision's AnchorGenerator makes anchors in the feature dtype; FP16 anchors are too coarse (1 px steps
    above 1024), so the export hands it FP32 stand-ins of the FP16 features (only their shapes are read)."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, image_list: Any, feature_maps: list[Tensor]) -> list[Tensor]:
        return self.generator(image_list, [f.float() for f in feature_maps])

    def num_anchors_per_location(self) -> list[int]:
        return self.generator.num_anchors_per_location()


def apply_fp16(model: nn.Module) -> nn.Module:
    """FP16 where the FLOPs are (backbone, PTG, fusion, FPN, RPN conv head, RoI box head), FP32 where precision
    matters (input normalisation, anchors, box decoding, RoI coordinates, softmax, NMS). Operates on the copy."""
    half = torch.float16
    model.backbone = CastIO(model.backbone, half)
    for name in ("ptg", "template_fusion"):
        if getattr(model, name, None) is not None:
            getattr(model, name).to(half)
    model.fpn.to(half)
    model.rpn.head = CastIO(model.rpn.head, half, torch.float32)
    model.rpn.anchor_generator = FloatAnchors(model.rpn.anchor_generator)
    for stage in model.roi_heads.stages:
        stage.box_head = CastIO(stage.box_head, half, torch.float32)
    return model


# ---------------------------------------------------------------------------------------------- export module
class DetectorExport(nn.Module):
    """``(image[, template]) -> (boxes, scores, labels, num_detections)``, fixed-size padded outputs.

    Wraps a private copy of the model; labels become 0-based indices into ``class_names``.
    """

    def __init__(self, model: nn.Module, spec: ExportSpec) -> None:
        super().__init__()
        self.model = model
        self.spec = spec
        reference = model.config.reference
        self.with_template = bool(reference.needs_template or spec.tr_post)
        self.max_detections = int(model.config.roi_head.detections_per_img)

    def forward(self, image: Tensor, template: Tensor | None = None):
        if self.with_template and template is None:
            raise ValueError("this export takes a template input (template reference or TR-Post compiled in)")
        detections = self.model(image, templates=template if self.with_template else None, tr_post=self.spec.tr_post)
        return pack_detections(detections, self.max_detections)


def pack_detections(detections: Sequence[Mapping[str, Tensor]], max_detections: int):
    """Per-image variable-length results -> padded [N, D, ...] tensors + counts; labels 1..C -> 0..C-1."""
    boxes, scores, labels, counts = [], [], [], []
    for det in detections:
        boxes.append(_pad_rows(det["boxes"], max_detections))
        scores.append(_pad_rows(det["scores"], max_detections))
        labels.append(_pad_rows(det["labels"] - 1, max_detections).clamp(min=0))
        counts.append(torch.ones_like(det["scores"], dtype=torch.int64).sum().clamp(max=max_detections))
    return torch.stack(boxes), torch.stack(scores), torch.stack(labels), torch.stack(counts)


def build_export_module(model: nn.Module, spec: ExportSpec) -> DetectorExport:
    """Export module around a deep copy of ``model`` (the caller's model is never modified)."""
    private = copy.deepcopy(model).eval()
    fixed_count_rpn(private.rpn)
    if spec.roi_ops == "rddn":
        swap_poolers(private, spec.precision)
    if spec.precision == "fp16":
        apply_fp16(private)
    return DetectorExport(private, spec).eval()


def example_inputs(spec: ExportSpec, with_template: bool, seed: int = 0) -> tuple[Tensor, ...]:
    """Deterministic frame (and template: the frame plus small noise) at the export size."""
    gen = torch.Generator().manual_seed(seed)
    shape = (spec.batch_size, 3) + tuple(spec.input_size)
    image = torch.rand(shape, generator=gen) * 255.0
    if not with_template:
        return (image,)
    template = (image + torch.randn(shape, generator=gen) * 4.0).clamp(0.0, 255.0)
    return image, template


def batched_nms_for_export(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """torchvision's coordinate-trick batched NMS minus its ``numel() == 0`` early return (see the module
    docstring). Identical results: boxes are clipped to the image (>= 0), so the maximum over the boxes and a
    zero is the boxes' maximum, and on zero boxes every tensor is empty and NMS keeps nothing."""
    from torchvision.ops import nms

    max_coordinate = torch.cat((boxes.reshape(-1), boxes.new_zeros(1))).max()
    offsets = idxs.to(boxes) * (max_coordinate + 1)
    return nms(boxes + offsets[:, None], scores, iou_threshold)


@contextmanager
def _traceable_batched_nms(enabled: bool) -> Iterator[None]:
    """While tracing, route torchvision's batched NMS through :func:`batched_nms_for_export`."""
    from torchvision.ops import boxes as box_ops

    original = box_ops._batched_nms_coordinate_trick
    if enabled:
        box_ops._batched_nms_coordinate_trick = batched_nms_for_export
    try:
        yield
    finally:
        box_ops._batched_nms_coordinate_trick = original


def export_onnx(module: DetectorExport, path: Path, spec: ExportSpec) -> Path:
    """Trace ``module`` and write the ONNX file (weights embedded: the graphs stay far below 2 GiB)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    inputs = example_inputs(spec, module.with_template)
    names = list(INPUT_NAMES[: len(inputs)])
    custom_opsets = None
    opset = spec.opset
    if any(isinstance(m, DeformConv2d) for m in module.modules()):
        opset = max(opset, DEFORM_CONV_OPSET)
        register_deform_conv_symbolic(opset)
    if spec.roi_ops == "rddn":
        from engines import custom_ops

        custom_ops.register_onnx_symbolics(opset)
        custom_opsets = {custom_ops.DOMAIN: custom_ops.DOMAIN_VERSION}
    with torch.no_grad(), warnings.catch_warnings(), redirect_stderr(io.StringIO()), \
            _traceable_batched_nms(spec.roi_ops == "onnx"):
        warnings.simplefilter("ignore")  # tracer warnings about Python ints: exactly what FixedCountProposals fixes
        torch.onnx.export(
            module, inputs, str(path), dynamo=False, opset_version=opset, input_names=names,
            output_names=list(OUTPUT_NAMES), do_constant_folding=True, custom_opsets=custom_opsets,
        )
    return path


def register_deform_conv_symbolic(opset: int) -> None:
    """torchvision registers no TorchScript-exporter symbolic for ``deform_conv2d`` (the -DCN backbone); map it
    to ONNX DeformConv (opset 19), whose offset layout ((y, x) pairs per kernel tap) and mask are torchvision's.
    ONNX Runtime has a CPU kernel for it; TensorRT's parser imports it too."""
    from torch.onnx import register_custom_op_symbolic
    from torch.onnx.symbolic_helper import parse_args

    @parse_args("v", "v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "i", "i", "b")
    def deform_conv2d(g, x, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, groups,
                      offset_groups, use_mask):
        inputs = [x, weight, offset, bias] + ([mask] if use_mask else [])
        return g.op("DeformConv", *inputs, dilations_i=[dil_h, dil_w], group_i=groups,
                    offset_group_i=offset_groups, pads_i=[pad_h, pad_w, pad_h, pad_w], strides_i=[stride_h, stride_w])

    register_custom_op_symbolic("torchvision::deform_conv2d", deform_conv2d, opset)


# ----------------------------------------------------------------------------------------------- graph checks
def check_onnx(path: Path, spec: ExportSpec, with_template: bool) -> None:
    """onnx.checker, shape inference, and the I/O contract of engines/artifact.py (names, dtypes, shapes)."""
    import onnx

    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    onnx.shape_inference.infer_shapes(model, strict_mode=False)
    expect_inputs = list(INPUT_NAMES[: 2 if with_template else 1])
    got_inputs = [i.name for i in model.graph.input]
    if got_inputs != expect_inputs:
        raise ValueError(f"{path}: graph inputs {got_inputs}, expected {expect_inputs}")
    expect_in_shape = [spec.batch_size, 3, *spec.input_size]
    for value in model.graph.input:
        if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT or _dims(value) != expect_in_shape:
            raise ValueError(f"{path}: input {value.name} is {_describe(value)}, expected float32 {expect_in_shape}")
    got_outputs = [o.name for o in model.graph.output]
    if got_outputs != list(OUTPUT_NAMES):
        raise ValueError(f"{path}: graph outputs {got_outputs}, expected {list(OUTPUT_NAMES)}")
    want = {"boxes": onnx.TensorProto.FLOAT, "scores": onnx.TensorProto.FLOAT,
            "labels": onnx.TensorProto.INT64, "num_detections": onnx.TensorProto.INT64}
    for value in model.graph.output:
        if value.type.tensor_type.elem_type != want[value.name]:
            raise ValueError(f"{path}: output {value.name} is {_describe(value)}, wrong dtype")


def _dims(value: Any) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def _describe(value: Any) -> str:
    import onnx

    return f"{onnx.TensorProto.DataType.Name(value.type.tensor_type.elem_type)} {_dims(value)}"


# -------------------------------------------------------------------------------------------------- parity
@dataclass
class ParityReport:
    """Eager vs exported detections of one image, matched greedily (same label, best IoU), top by score."""

    eager_count: int
    onnx_count: int
    compared: int
    matched: int
    max_box_diff: float
    max_score_diff: float
    unmatched: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"eager {self.eager_count} / exported {self.onnx_count} detections; top {self.compared} compared: "
                f"{self.matched} matched, max |box diff| {self.max_box_diff:.3g} px, "
                f"max |score diff| {self.max_score_diff:.3g}")


def compare_detections(eager: Mapping[str, np.ndarray], exported: Mapping[str, np.ndarray], top: int = 20,
                       min_iou: float = 0.9) -> ParityReport:
    """Match the top ``top`` eager detections (by score) to exported ones of the same 0-based label.

    Greedy, best IoU first: near-equal scores may swap order between runtimes, so positions are not compared.
    """
    e_order = np.argsort(-exported_scores(eager), kind="stable")[:top]
    x_scores = exported_scores(exported)
    used = np.zeros(len(x_scores), dtype=bool)
    box_diff = score_diff = 0.0
    matched = 0
    unmatched = []
    for i in e_order:
        box = eager["boxes"][i]
        candidates = np.where((exported["labels"] == eager["labels"][i]) & ~used)[0]
        if len(candidates) == 0:
            unmatched.append(f"label {eager['labels'][i]} score {eager['scores'][i]:.4f} box {box.round(1).tolist()}")
            continue
        ious = _iou(box, exported["boxes"][candidates])
        j = candidates[int(np.argmax(ious))]
        if ious.max() < min_iou:
            unmatched.append(f"label {eager['labels'][i]} score {eager['scores'][i]:.4f} box {box.round(1).tolist()}"
                             f" (best IoU {ious.max():.3f})")
            continue
        used[j] = True
        matched += 1
        box_diff = max(box_diff, float(np.abs(exported["boxes"][j] - box).max()))
        score_diff = max(score_diff, float(abs(exported["scores"][j] - eager["scores"][i])))
    return ParityReport(len(eager["scores"]), len(x_scores), len(e_order), matched, box_diff, score_diff, unmatched)


def exported_scores(dets: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.asarray(dets["scores"], dtype=np.float64)


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[2], boxes[:, 2])
    y2 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def unpack_outputs(outputs: Sequence[np.ndarray], index: int = 0) -> dict[str, np.ndarray]:
    """One image's valid rows from the graph's padded outputs (boxes, scores, labels, num_detections)."""
    boxes, scores, labels, counts = outputs
    n = int(counts[index])
    return {"boxes": boxes[index, :n], "scores": scores[index, :n], "labels": labels[index, :n]}


def batch_eager_detections(model: nn.Module, inputs: Sequence[Tensor], tr_post: bool) -> list[dict[str, np.ndarray]]:
    """The model's detections of every image, labels made 0-based like the graph's."""
    template = inputs[1] if len(inputs) > 1 else None
    with torch.no_grad():
        dets = model(inputs[0], templates=template, tr_post=tr_post)
    return [{"boxes": d["boxes"].numpy(), "scores": d["scores"].numpy(), "labels": d["labels"].numpy() - 1}
            for d in dets]


def eager_detections(model: nn.Module, inputs: Sequence[Tensor], tr_post: bool) -> dict[str, np.ndarray]:
    """Image 0's detections (see :func:`batch_eager_detections`)."""
    return batch_eager_detections(model, inputs, tr_post)[0]


def run_onnxruntime(path: Path, inputs: Sequence[Tensor], threads: int = 1) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    feeds = {i.name: x.numpy() for i, x in zip(session.get_inputs(), inputs)}
    return session.run(None, feeds)


def verify_against_eager(model: nn.Module, module: DetectorExport, path: Path, spec: ExportSpec,
                         seed: int = 1, runner: Callable[[Path, dict[str, np.ndarray]], Sequence[np.ndarray]]
                         | None = None) -> ParityReport:
    """Compile-time self-check: the exported graph vs the unmodified ``model`` on a fresh deterministic frame.

    The standard-ONNX graph runs in ONNX Runtime (or ``runner(path, feeds)``, e.g. OpenVINO on the IR); the
    ``rddn`` variant runs through the custom ops' reference implementations (:mod:`engines.custom_ops`), since
    ONNX Runtime has no kernels for them.
    """
    inputs = example_inputs(spec, module.with_template, seed=seed)
    feeds = dict(zip(INPUT_NAMES, (x.numpy() for x in inputs)))
    if runner is not None:
        outputs = list(runner(path, feeds))
    elif spec.roi_ops == "rddn":
        from engines import custom_ops

        outputs = custom_ops.run_reference(path, feeds)
    else:
        outputs = run_onnxruntime(path, inputs)
    reports = [compare_detections(reference, unpack_outputs(outputs, index))
               for index, reference in enumerate(batch_eager_detections(model, inputs, spec.tr_post))]
    for index, report in enumerate(reports):
        if report.matched != report.compared:
            raise RuntimeError(f"exported graph {path} disagrees with PyTorch on image {index}: {report.summary()}; "
                               f"unmatched: {report.unmatched[:5]}")
    return reports[0]
