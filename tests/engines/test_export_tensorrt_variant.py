"""The TensorRT-variant ONNX of the whole detector: ``rddn`` plugin nodes for RoI extraction, explicit FP16.

Checks the whole-model graph (the single ops are tested in test_custom_ops.py): onnx.checker passes with the
ops' schemas, one plugin node per RoI pooling with the model's attributes, FP16 feature inputs and FP32 rois,
no standard RoiAlign left, FP16 convolutions; and the graph, run on CPU through ``onnx.reference`` with the
custom ops' reference implementations, matches PyTorch eager (FP32 graph: 1e-3 px / 1e-5; FP16 graph against the
FP32 model: 0.05 px / 5e-3, top 10 detections).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from engines import custom_ops
from engines import export_onnx as ex
from engines.onnx_graph import iter_nodes, node_attributes, value_dtypes
from training.model import build_model
from training.model import roi_semantics as rs
from training.model.config import ModelConfig

torch.set_num_threads(1)
SIZE = (128, 96)
FLOAT, HALF = onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16


def tiny_model(**overrides) -> torch.nn.Module:
    config = ModelConfig.model_validate({
        "class_names": ["scratch", "dent", "stain"],
        "backbone": {"depth": 18, "width": 16},
        # one 3x3 per level: the FP16 comparisons below were sized on this model (a random model's top 10
        # includes near-tied boxes that FP16 rounding may reorder in NMS)
        "fpn": {"out_channels": 32, "shared_output_conv": False},
        "rpn": {"pre_nms_top_n_test": 300, "post_nms_top_n_test": 64},
        "roi_head": {"representation_size": 64},
        **overrides,
    })
    torch.manual_seed(0)
    model = build_model(config).eval()
    with torch.no_grad():
        for stage in model.roi_heads.stages:
            stage.box_predictor.cls_score.weight.normal_(0.0, 0.3)
    return model


def _export(model: torch.nn.Module, tmp_path: Path, precision: str) -> tuple[Path, ex.ExportSpec]:
    spec = ex.ExportSpec(input_size=SIZE, roi_ops="rddn", precision=precision)
    path = ex.export_onnx(ex.build_export_module(model, spec), tmp_path / f"model_{precision}.onnx", spec)
    ex.check_onnx(path, spec, with_template=model.config.reference.needs_template)
    return path, spec


def _plugin_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in iter_nodes(model.graph) if n.domain == custom_ops.DOMAIN]


@pytest.mark.parametrize(
    ("overrides", "op", "count", "mode"),
    [
        ({}, "MultiLevelRoIAlign", 1, None),
        ({"context": {"enabled": True}}, "ContextRoIAlign", 1, "concat"),
        ({"architecture": "cascade", "context": {"enabled": True, "mode": "context_only"}}, "ContextRoIAlign", 3,
         "context_only"),
    ],
)
def test_plugin_nodes_attributes_and_dtypes(tmp_path: Path, overrides: dict, op: str, count: int,
                                            mode: str | None) -> None:
    model = tiny_model(**overrides)
    path, _ = _export(model, tmp_path, "fp16")
    proto = onnx.load(str(path))
    custom_ops.register_onnx_schemas()
    onnx.checker.check_model(proto, full_check=True)
    nodes = _plugin_nodes(proto)
    assert [n.op_type for n in nodes] == [op] * count  # one node per RoI pooling (per cascade stage)
    assert not [n for n in iter_nodes(proto.graph) if n.op_type == "RoiAlign"]
    dtypes = value_dtypes(proto)
    for node in nodes:
        attrs = node_attributes(node)
        assert np.allclose(attrs["spatial_scales"], rs.ROI_ALIGN.spatial_scales)
        assert attrs["output_size"] == rs.ROI_ALIGN.output_size
        assert attrs["sampling_ratio"] == rs.ROI_ALIGN.sampling_ratio and attrs["aligned"] == 1
        assert attrs["canonical_scale"] == pytest.approx(rs.CANONICAL_SCALE)
        assert attrs["plugin_namespace"] == "rddn"
        if mode is not None:
            assert attrs["mode"] == mode and attrs["k"] == pytest.approx(model.config.context.k)
            assert (attrs["image_height"], attrs["image_width"]) == SIZE
        assert [dtypes[name] for name in node.input[:4]] == [HALF] * 4, "FP16 features"
        assert dtypes[node.input[4]] == FLOAT, "FP32 rois"
    conv_inputs = [dtypes.get(n.input[0]) for n in iter_nodes(proto.graph) if n.op_type == "Conv"]
    assert conv_inputs and all(t == HALF for t in conv_inputs), "every convolution runs in FP16"
    out_types = {o.name: o.type.tensor_type.elem_type for o in proto.graph.output}
    assert out_types["boxes"] == FLOAT and out_types["scores"] == FLOAT  # FP32 post-processing


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_reference_run_matches_pytorch(tmp_path: Path, precision: str) -> None:
    model = tiny_model(context={"enabled": True})
    path, spec = _export(model, tmp_path, precision)
    inputs = ex.example_inputs(spec, False, seed=2)
    outputs = custom_ops.run_reference(path, {"image": inputs[0].numpy()})
    exported = ex.unpack_outputs(outputs)
    eager = ex.eager_detections(model, inputs, tr_post=False)
    assert len(eager["scores"]) > 0 and len(exported["scores"]) > 0
    top, box_tol, score_tol = (20, 1e-3, 1e-5) if precision == "fp32" else (10, 0.05, 5e-3)
    report = ex.compare_detections(eager, exported, top=top)
    assert report.matched == report.compared, report.unmatched
    assert report.max_box_diff < box_tol and report.max_score_diff < score_tol, report.summary()


def test_tr_inter_fp16_keeps_template_branch_in_fp16(tmp_path: Path) -> None:
    model = tiny_model(reference={"feature": "tr_inter"})
    path, spec = _export(model, tmp_path, "fp16")
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["image", "template"]
    inputs = ex.example_inputs(spec, True, seed=3)
    outputs = custom_ops.run_reference(proto, {"image": inputs[0].numpy(), "template": inputs[1].numpy()})
    eager = ex.eager_detections(model, inputs, tr_post=False)
    report = ex.compare_detections(eager, ex.unpack_outputs(outputs), top=10)
    assert report.compared > 0 and report.matched == report.compared, report.unmatched
