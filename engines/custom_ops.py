"""The ``rddn`` custom ONNX ops that become TensorRT plugins: multi-level RoIAlign and context pooling.

The TensorRT variant of the exported graph replaces the model's region pooling (per-level torchvision
``roi_align`` routed by ``roi_semantics.map_roi_levels``, plus ``context_boxes`` for CR) by one node each:

- ``rddn::MultiLevelRoIAlign(p2, p3, p4, p5, rois) -> [R, C, P, P]``
- ``rddn::ContextRoIAlign(p2, p3, p4, p5, rois) -> [R, 2C, P, P]`` (``mode=concat``: RoI then context channels)
  or ``[R, C, P, P]`` (``mode=context_only``)

Inputs: features float16 or float32 (type T, all four alike), ``rois`` always float32 [R, 5]
(batch_idx, x1, y1, x2, y2) in input pixels (FP16 boxes are too coarse above ~1024 px); output is T.
Attributes: ``spatial_scales`` (floats, one per level), ``output_size``, ``sampling_ratio``, ``aligned`` (0/1),
``canonical_scale``, ``level_eps``; ContextRoIAlign adds ``k``, ``image_height``, ``image_width``, ``mode``.
Every node also carries ``plugin_namespace="rddn"`` so TensorRT's ONNX parser finds the plugin.

This module gives the three faces of those ops, all computing the model's own definition:
(a) torch custom ops (``torch.ops.rddn.multilevel_roi_align`` / ``context_roi_align``) with an eager
    implementation that reuses ``training.model.roi_semantics`` and torchvision's ``roi_align``, exported as single
    custom-domain nodes by the dynamo exporter (:func:`onnx_translation_table`);
(b) ONNX schemas (:func:`register_onnx_schemas`) so ``onnx.checker`` validates the nodes' inputs and attributes;
(c) ``onnx.reference`` implementations (:func:`reference_ops`) so the TensorRT-variant ONNX runs on CPU.
The CUDA kernels (``engines/kernels``) implement the same ops; ``engines.host_kernels`` is their CPU build.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

# One spelling of the op names for the ONNX nodes and the TensorRT plugins (that module is torch-free).
from engines.tensorrt_plugins import CONTEXT_OP, MULTILEVEL_OP, PLUGIN_NAMESPACE
from training.model import roi_semantics as rs
from training.model import roi_pooling

DOMAIN = PLUGIN_NAMESPACE
OPSET_VERSION = 1
DOMAIN_VERSION = OPSET_VERSION  # for torch.onnx.export(custom_opsets={DOMAIN: DOMAIN_VERSION})
NUM_LEVELS = len(rs.ROI_LEVELS)
FEATURE_INPUTS: tuple[str, ...] = tuple(f"p{level}" for level in rs.ROI_LEVELS)

ContextMode = Literal["concat", "context_only"]


@dataclass(frozen=True)
class RoIPoolingAttributes:
    """Node attributes of both ops, defaulting to the model's definition in ``roi_semantics``."""

    spatial_scales: tuple[float, ...] = rs.ROI_ALIGN.spatial_scales
    output_size: int = rs.ROI_ALIGN.output_size
    sampling_ratio: int = rs.ROI_ALIGN.sampling_ratio
    aligned: bool = rs.ROI_ALIGN.aligned
    canonical_scale: float = rs.CANONICAL_SCALE
    level_eps: float = rs.LEVEL_EPS

    def validate(self) -> None:
        """The eager op is the model's pooling: a node that asks for another level mapping is an export bug."""
        if len(self.spatial_scales) != NUM_LEVELS:
            raise ValueError(f"spatial_scales needs {NUM_LEVELS} values (P2..P5), got {self.spatial_scales}")
        # Compared as float32: ONNX float attributes (and the kernels) hold float32.
        given = np.float32([self.canonical_scale, self.level_eps])
        if not np.array_equal(given, np.float32([rs.CANONICAL_SCALE, rs.LEVEL_EPS])):
            raise ValueError(
                f"canonical_scale={self.canonical_scale}, level_eps={self.level_eps} differ from "
                f"training.model.roi_semantics ({rs.CANONICAL_SCALE}, {rs.LEVEL_EPS}): the model was trained "
                "with that level mapping"
            )


@dataclass(frozen=True)
class ContextAttributes(RoIPoolingAttributes):
    """ContextRoIAlign's extra attributes: context scale, the (unpadded) image size to clip to, output mode."""

    k: float = rs.CONTEXT_SCALE
    image_height: int = 0
    image_width: int = 0
    mode: ContextMode = "concat"

    def validate(self) -> None:
        super().validate()
        if self.image_height <= 0 or self.image_width <= 0:
            raise ValueError(
                f"ContextRoIAlign needs the image size to clip context boxes to, got image_height="
                f"{self.image_height}, image_width={self.image_width}"
            )
        if self.mode not in ("concat", "context_only"):
            raise ValueError(f"ContextRoIAlign mode must be 'concat' or 'context_only', got {self.mode!r}")


# ----------------------------------------------------------------------------------------------------------------
# Eager semantics (the model's definition)


def _check_inputs(features: Sequence[Tensor], rois: Tensor) -> None:
    if len(features) != NUM_LEVELS:
        raise ValueError(f"expected {NUM_LEVELS} feature levels {FEATURE_INPUTS}, got {len(features)}")
    first = features[0]
    for name, feat in zip(FEATURE_INPUTS, features):
        if feat.dim() != 4 or feat.shape[:2] != first.shape[:2] or feat.dtype != first.dtype:
            raise ValueError(
                f"feature {name}: expected [{first.shape[0]}, {first.shape[1]}, H, W] {first.dtype}, "
                f"got {tuple(feat.shape)} {feat.dtype}"
            )
    if rois.dim() != 2 or rois.shape[1] != 5 or rois.dtype != torch.float32:
        raise ValueError(f"rois must be float32 [R, 5] (batch, x1, y1, x2, y2), got {tuple(rois.shape)} {rois.dtype}")


def pool_levels(
    features: Sequence[Tensor], rois: Tensor, levels: Tensor, attrs: RoIPoolingAttributes
) -> Tensor:
    """The model's per-level RoIAlign (``training.model.roi_pooling``) with the node's attributes."""
    return roi_pooling.multilevel_roi_align(
        features, rois, levels, spatial_scales=attrs.spatial_scales, output_size=attrs.output_size,
        sampling_ratio=attrs.sampling_ratio, aligned=attrs.aligned,
    )


def multilevel_roi_align_reference(
    features: Sequence[Tensor], rois: Tensor, attrs: RoIPoolingAttributes = RoIPoolingAttributes()
) -> Tensor:
    """MultiLevelRoIAlign in eager: ``map_roi_levels`` routing + per-level torchvision ``roi_align``."""
    _check_inputs(features, rois)
    attrs.validate()
    levels = rs.map_roi_levels(rois[:, 1:], NUM_LEVELS)
    return pool_levels(features, rois, levels, attrs)


def context_roi_align_reference(features: Sequence[Tensor], rois: Tensor, attrs: ContextAttributes) -> Tensor:
    """ContextRoIAlign in eager: ``context_boxes`` pooled from the RoI's own level (not the context box's)."""
    _check_inputs(features, rois)
    attrs.validate()
    levels = rs.map_roi_levels(rois[:, 1:], NUM_LEVELS)
    context = torch.cat(
        [rois[:, :1], rs.context_boxes(rois[:, 1:], (attrs.image_height, attrs.image_width), attrs.k)], dim=1
    )
    context_features = pool_levels(features, context, levels, attrs)
    if attrs.mode == "context_only":
        return context_features
    return torch.cat([pool_levels(features, rois, levels, attrs), context_features], dim=1)


# ----------------------------------------------------------------------------------------------------------------
# (a) torch custom ops: what the exporter sees as one node each


def _pooled_shape(p2: Tensor, rois: Tensor, output_size: int, channel_factor: int) -> tuple[Any, ...]:
    return (rois.shape[0], p2.shape[1] * channel_factor, output_size, output_size)


@torch.library.custom_op("rddn::multilevel_roi_align", mutates_args=())
def _multilevel_op(
    p2: Tensor, p3: Tensor, p4: Tensor, p5: Tensor, rois: Tensor,
    spatial_scales: list[float], output_size: int, sampling_ratio: int, aligned: bool,
    canonical_scale: float, level_eps: float,
) -> Tensor:
    """``rddn::MultiLevelRoIAlign`` (inference only: no autograd formula is registered)."""
    attrs = RoIPoolingAttributes(tuple(spatial_scales), output_size, sampling_ratio, aligned, canonical_scale,
                                 level_eps)
    return multilevel_roi_align_reference([p2, p3, p4, p5], rois, attrs)


@_multilevel_op.register_fake
def _multilevel_fake(p2, p3, p4, p5, rois, spatial_scales, output_size, sampling_ratio, aligned, canonical_scale,
                     level_eps):
    return p2.new_empty(_pooled_shape(p2, rois, output_size, 1))


@torch.library.custom_op("rddn::context_roi_align", mutates_args=())
def _context_op(
    p2: Tensor, p3: Tensor, p4: Tensor, p5: Tensor, rois: Tensor,
    spatial_scales: list[float], output_size: int, sampling_ratio: int, aligned: bool,
    canonical_scale: float, level_eps: float, k: float, image_height: int, image_width: int, mode: str,
) -> Tensor:
    """``rddn::ContextRoIAlign`` (inference only: no autograd formula is registered)."""
    attrs = ContextAttributes(tuple(spatial_scales), output_size, sampling_ratio, aligned, canonical_scale,
                              level_eps, k, image_height, image_width, mode)  # type: ignore[arg-type]
    return context_roi_align_reference([p2, p3, p4, p5], rois, attrs)


@_context_op.register_fake
def _context_fake(p2, p3, p4, p5, rois, spatial_scales, output_size, sampling_ratio, aligned, canonical_scale,
                  level_eps, k, image_height, image_width, mode):
    return p2.new_empty(_pooled_shape(p2, rois, output_size, 2 if mode == "concat" else 1))


def _op_kwargs(attrs: RoIPoolingAttributes) -> dict[str, Any]:
    values = asdict(attrs)
    values["spatial_scales"] = list(values["spatial_scales"])
    return values


def multilevel_roi_align(features: Sequence[Tensor], rois: Tensor,
                         attrs: RoIPoolingAttributes | None = None) -> Tensor:
    """``rddn::MultiLevelRoIAlign`` on P2..P5 ``features`` and float32 ``rois`` [R, 5]: what export wrappers call.

    Eager: the model's pooling; under ``torch.onnx.export``: one ``rddn`` node (either exporter)."""
    if len(features) != NUM_LEVELS:
        raise ValueError(f"expected {NUM_LEVELS} feature levels {FEATURE_INPUTS}, got {len(features)}")
    return torch.ops.rddn.multilevel_roi_align(*features, rois, **_op_kwargs(attrs or RoIPoolingAttributes()))


def context_roi_align(features: Sequence[Tensor], rois: Tensor, *, image_height: int, image_width: int,
                      k: float = rs.CONTEXT_SCALE, mode: ContextMode = "concat",
                      attrs: RoIPoolingAttributes | None = None) -> Tensor:
    """``rddn::ContextRoIAlign``: the RoI and its k-scaled context box clipped to (image_height, image_width),
    both from the RoI's level; ``mode`` concat -> [R, 2C, P, P], context_only -> [R, C, P, P]."""
    if len(features) != NUM_LEVELS:
        raise ValueError(f"expected {NUM_LEVELS} feature levels {FEATURE_INPUTS}, got {len(features)}")
    source = attrs or RoIPoolingAttributes()
    base = {f.name: getattr(source, f.name) for f in fields(RoIPoolingAttributes)}
    context = ContextAttributes(**base, k=float(k), image_height=int(image_height), image_width=int(image_width),
                                mode=mode)
    context.validate()
    return torch.ops.rddn.context_roi_align(*features, rois, **_op_kwargs(context))


# ----------------------------------------------------------------------------------------------------------------
# (b) ONNX schemas + the exporter's translation table


def register_onnx_schemas() -> None:
    """Register both ops' schemas with ``onnx.defs`` (idempotent): lets onnxscript build the nodes and
    ``onnx.checker`` validate their inputs, types and attributes."""
    from onnx import defs

    attr = defs.OpSchema.Attribute
    kind = defs.OpSchema.AttrType
    param = defs.OpSchema.FormalParameter
    common = [
        attr("spatial_scales", kind.FLOATS, "feature scale of each level P2..P5 (1/stride)"),
        attr("output_size", kind.INT, "pooled height = width"),
        attr("sampling_ratio", kind.INT, "bilinear samples per bin and axis (<= 0: adaptive)"),
        attr("aligned", kind.INT, "1: half-pixel offset (torchvision aligned=True)"),
        attr("canonical_scale", kind.FLOAT, "level mapping floor(log2(sqrt(wh)/canonical_scale + level_eps))"),
        attr("level_eps", kind.FLOAT, "see canonical_scale"),
        attr("plugin_namespace", kind.STRING, "TensorRT plugin namespace ('rddn')"),
    ]
    context_only = [
        attr("k", kind.FLOAT, "context box scale"),
        attr("image_height", kind.INT, "image height the context box is clipped to"),
        attr("image_width", kind.INT, "image width the context box is clipped to"),
        attr("mode", kind.STRING, "'concat' -> [R, 2C, P, P]; 'context_only' -> [R, C, P, P]"),
    ]
    inputs = [param(name, "T", f"FPN level {name.upper()}, NCHW") for name in FEATURE_INPUTS]
    inputs.append(param("rois", "tensor(float)", "[R, 5] (batch_idx, x1, y1, x2, y2) in input pixels"))
    for name, attributes, doc in (
        (MULTILEVEL_OP, common, "RoIAlign of each RoI on its FPN level."),
        (CONTEXT_OP, common + context_only, "RoIAlign of each RoI and its clipped context box on the RoI's level."),
    ):
        if defs.has(name, DOMAIN):
            continue
        defs.register_schema(defs.OpSchema(
            name, DOMAIN, OPSET_VERSION, doc=doc, inputs=inputs,
            outputs=[param("pooled", "T", "[R, C or 2C, P, P]")],
            type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "feature type")],
            attributes=attributes,
        ))


def _onnx_attributes(spatial_scales, output_size, sampling_ratio, aligned, canonical_scale, level_eps):
    return dict(
        spatial_scales=[float(s) for s in spatial_scales], output_size=int(output_size),
        sampling_ratio=int(sampling_ratio), aligned=int(bool(aligned)), canonical_scale=float(canonical_scale),
        level_eps=float(level_eps), plugin_namespace=DOMAIN,
    )


def onnx_translation_table() -> dict[Callable[..., Any], Callable[..., Any]]:
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``: each custom op -> one node."""
    import onnxscript

    register_onnx_schemas()
    opset = onnxscript.values.Opset(DOMAIN, OPSET_VERSION)

    def multilevel(p2, p3, p4, p5, rois, spatial_scales, output_size, sampling_ratio, aligned, canonical_scale,
                   level_eps):
        return opset.MultiLevelRoIAlign(p2, p3, p4, p5, rois, **_onnx_attributes(
            spatial_scales, output_size, sampling_ratio, aligned, canonical_scale, level_eps))

    def context(p2, p3, p4, p5, rois, spatial_scales, output_size, sampling_ratio, aligned, canonical_scale,
                level_eps, k, image_height, image_width, mode):
        return opset.ContextRoIAlign(p2, p3, p4, p5, rois, k=float(k), image_height=int(image_height),
                                     image_width=int(image_width), mode=str(mode), **_onnx_attributes(
            spatial_scales, output_size, sampling_ratio, aligned, canonical_scale, level_eps))

    return {
        torch.ops.rddn.multilevel_roi_align.default: multilevel,
        torch.ops.rddn.context_roi_align.default: context,
    }


_SYMBOLICS_REGISTERED: set[int] = set()


def register_onnx_symbolics(opset_version: int) -> None:
    """Symbolics for the TorchScript exporter (``torch.onnx.export(..., dynamo=False, custom_opsets={DOMAIN:
    DOMAIN_VERSION})``): each custom op -> one ``rddn`` node with typed attributes (idempotent per opset)."""
    if opset_version in _SYMBOLICS_REGISTERED:
        return
    from torch.onnx import register_custom_op_symbolic, symbolic_helper

    register_onnx_schemas()

    def _attributes(spatial_scales, output_size, sampling_ratio, aligned, canonical_scale, level_eps):
        values = _onnx_attributes(spatial_scales, output_size, sampling_ratio, aligned, canonical_scale, level_eps)
        return dict(spatial_scales_f=values["spatial_scales"], output_size_i=values["output_size"],
                    sampling_ratio_i=values["sampling_ratio"], aligned_i=values["aligned"],
                    canonical_scale_f=values["canonical_scale"], level_eps_f=values["level_eps"],
                    plugin_namespace_s=DOMAIN)

    def _typed(node, p2, channel_factor: int, output_size: int):
        feature_type = p2.type()
        if hasattr(feature_type, "with_sizes") and feature_type.dim() is not None:
            channels = feature_type.varyingSizes()[1]
            channels = channels * channel_factor if channels is not None else None
            node.setType(feature_type.with_sizes([None, channels, output_size, output_size]))
        return node

    @symbolic_helper.parse_args("v", "v", "v", "v", "v", "fs", "i", "i", "b", "f", "f")
    def multilevel(g, p2, p3, p4, p5, rois, spatial_scales, output_size, sampling_ratio, aligned, canonical_scale,
                   level_eps):
        node = g.op(f"{DOMAIN}::{MULTILEVEL_OP}", p2, p3, p4, p5, rois, **_attributes(
            spatial_scales, output_size, sampling_ratio, aligned, canonical_scale, level_eps))
        return _typed(node, p2, 1, output_size)

    @symbolic_helper.parse_args("v", "v", "v", "v", "v", "fs", "i", "i", "b", "f", "f", "f", "i", "i", "s")
    def context(g, p2, p3, p4, p5, rois, spatial_scales, output_size, sampling_ratio, aligned, canonical_scale,
                level_eps, k, image_height, image_width, mode):
        node = g.op(f"{DOMAIN}::{CONTEXT_OP}", p2, p3, p4, p5, rois, k_f=float(k), image_height_i=int(image_height),
                    image_width_i=int(image_width), mode_s=str(mode), **_attributes(
                        spatial_scales, output_size, sampling_ratio, aligned, canonical_scale, level_eps))
        return _typed(node, p2, 2 if mode == "concat" else 1, output_size)

    register_custom_op_symbolic("rddn::multilevel_roi_align", multilevel, opset_version)
    register_custom_op_symbolic("rddn::context_roi_align", context, opset_version)
    _SYMBOLICS_REGISTERED.add(opset_version)


# ----------------------------------------------------------------------------------------------------------------
# (c) onnx.reference implementations


def _attrs_from_node(values: dict[str, Any], context: bool) -> RoIPoolingAttributes:
    """Node attributes (as onnx.reference hands them over) -> dataclass, with the schema's defaults."""
    base = dict(
        spatial_scales=tuple(float(s) for s in values.get("spatial_scales") or rs.ROI_ALIGN.spatial_scales),
        output_size=int(values.get("output_size", rs.ROI_ALIGN.output_size)),
        sampling_ratio=int(values.get("sampling_ratio", rs.ROI_ALIGN.sampling_ratio)),
        aligned=bool(values.get("aligned", int(rs.ROI_ALIGN.aligned))),
        canonical_scale=float(values.get("canonical_scale", rs.CANONICAL_SCALE)),
        level_eps=float(values.get("level_eps", rs.LEVEL_EPS)),
    )
    if not context:
        return RoIPoolingAttributes(**base)
    mode = values.get("mode", "concat")
    return ContextAttributes(
        **base, k=float(values.get("k", rs.CONTEXT_SCALE)), image_height=int(values.get("image_height", 0)),
        image_width=int(values.get("image_width", 0)),
        mode=mode.decode() if isinstance(mode, bytes) else mode,
    )


Implementation = Literal["torch", "host_kernels"]


def _run_torch(inputs: Sequence[np.ndarray], attrs: RoIPoolingAttributes, context: bool) -> np.ndarray:
    features = [torch.from_numpy(np.ascontiguousarray(a)) for a in inputs[:NUM_LEVELS]]
    rois = torch.from_numpy(np.ascontiguousarray(inputs[NUM_LEVELS]))
    with torch.no_grad():
        if context:
            return context_roi_align_reference(features, rois, attrs).numpy()  # type: ignore[arg-type]
        return multilevel_roi_align_reference(features, rois, attrs).numpy()


def _run_host_kernels(inputs: Sequence[np.ndarray], attrs: RoIPoolingAttributes, context: bool) -> np.ndarray:
    """The CUDA kernels' source built for the CPU (``engines.host_kernels``) in place of the plugins."""
    from engines import host_kernels

    values = {f.name: getattr(attrs, f.name) for f in fields(attrs)}
    host_attrs = host_kernels.PoolingAttributes(**values)
    return host_kernels.pool(list(inputs[:NUM_LEVELS]), np.asarray(inputs[NUM_LEVELS]), host_attrs, context=context)


def reference_ops(implementation: Implementation = "torch") -> list[type]:
    """``onnx.reference.op_run.OpRun`` classes for ``ReferenceEvaluator(model, new_ops=reference_ops())``.

    ``torch``: the model's pooling (torchvision); ``host_kernels``: the plugins' CUDA source built for the CPU, so a
    whole TensorRT-variant graph can run with the kernels' arithmetic where TensorRT cannot.
    """
    from onnx.reference.op_run import OpRun

    if implementation not in ("torch", "host_kernels"):
        raise ValueError(f"implementation must be 'torch' or 'host_kernels', got {implementation!r}")
    pool = _run_torch if implementation == "torch" else _run_host_kernels

    def run(self: OpRun, inputs: Sequence[np.ndarray], context: bool) -> tuple[np.ndarray]:
        names = ("spatial_scales", "output_size", "sampling_ratio", "aligned", "canonical_scale", "level_eps",
                 "k", "image_height", "image_width", "mode")
        values = {n: getattr(self, n) for n in names if getattr(self, n, None) is not None}
        return (pool(inputs, _attrs_from_node(values, context), context),)

    class MultiLevelRoIAlign(OpRun):
        op_domain = DOMAIN

        def _run(self, p2, p3, p4, p5, rois, **_attributes):  # type: ignore[override]
            return run(self, (p2, p3, p4, p5, rois), context=False)

    class ContextRoIAlign(OpRun):
        op_domain = DOMAIN

        def _run(self, p2, p3, p4, p5, rois, **_attributes):  # type: ignore[override]
            return run(self, (p2, p3, p4, p5, rois), context=True)

    return [MultiLevelRoIAlign, ContextRoIAlign]


def run_reference(model: Any, feeds: Mapping[str, np.ndarray], output_names: Sequence[str] | None = None,
                  implementation: Implementation = "torch") -> list[np.ndarray]:
    """Run a TensorRT-variant ONNX (path or ModelProto) on CPU with ``onnx.reference`` + these ops' reference
    implementations; returns the outputs in graph order (or ``output_names`` order). Slow on big graphs (numpy
    convolutions): meant for parity checks, not serving."""
    import onnx
    from onnx.reference import ReferenceEvaluator

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    evaluator = ReferenceEvaluator(proto, new_ops=reference_ops(implementation))
    return list(evaluator.run(list(output_names) if output_names else None, dict(feeds)))
