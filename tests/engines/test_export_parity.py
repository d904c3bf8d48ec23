"""ONNX Runtime and OpenVINO vs PyTorch eager on the exported RDDN graph (standard ONNX ops), per model
configuration: both CPU runtimes run the same file and must give the model's detections.

Tiny random-weight models (ResNet-18 width 16, FPN 32 channels, 128x128 input) with the box classifier's
weights spread so the scores differ clearly: every comparison first asserts that there ARE detections above the
0.01 threshold (parity on zero detections proves nothing). Tolerances, the same for both runtimes: the top 20
eager detections (by score) each match an exported one with the same label and IoU >= 0.9, boxes within
1e-3 px, scores within 1e-5 (FP32 everywhere, OpenVINO's inference precision pinned to f32; the only
differences are summation orders).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from engines import export_onnx as ex
from engines import openvino_ir
from engines.onnx_graph import iter_nodes
from training.model import build_model
from training.model.config import ModelConfig

torch.set_num_threads(1)
SIZE = (128, 128)
BOX_TOL_PX = 1e-3
SCORE_TOL = 1e-5
RUNTIMES = ("onnxruntime", "openvino")
IR_CHECKED = ("cascade_cr", "tr_inter")

TINY = {
    "class_names": ["scratch", "dent", "stain"],
    "backbone": {"depth": 18, "width": 16},
    "fpn": {"out_channels": 32},
    "rpn": {"pre_nms_top_n_test": 300, "post_nms_top_n_test": 64},
    "roi_head": {"representation_size": 64},
}

CONFIGS = {
    "faster_cr": {"context": {"enabled": True}},
    "cascade_cr": {"architecture": "cascade", "context": {"enabled": True}},
    "tr_inter": {"reference": {"feature": "tr_inter"}, "context": {"enabled": True}},
    "tr_pre": {"reference": {"input": "tr_pre"}, "context": {"enabled": True}},
    "ptg": {"reference": {"feature": "ptg", "ptg_hidden": 16}},
    # many more proposal slots than the RPN fills: the fixed-count padding is exercised on every frame
    "faster_padded_proposals": {"rpn": {"pre_nms_top_n_test": 300, "post_nms_top_n_test": 2000}},
}


def tiny_model(overrides: dict, seed: int = 0) -> torch.nn.Module:
    merged = {**TINY, **overrides}
    for key in ("rpn", "reference", "context"):
        if key in TINY and key in overrides:
            merged[key] = {**TINY[key], **overrides[key]}
    torch.manual_seed(seed)
    model = build_model(ModelConfig.model_validate(merged)).eval()
    with torch.no_grad():  # spread class scores: clear winners, few exact ties between near-identical boxes
        for stage in model.roi_heads.stages:
            stage.box_predictor.cls_score.weight.normal_(0.0, 0.3)
            stage.box_predictor.bbox_pred.weight.normal_(0.0, 0.02)
    return model


def _export(model: torch.nn.Module, tmp_path: Path, tr_post: bool = False) -> tuple[ex.DetectorExport, Path,
                                                                                       ex.ExportSpec]:
    spec = ex.ExportSpec(input_size=SIZE, tr_post=tr_post)
    module = ex.build_export_module(model, spec)
    path = ex.export_onnx(module, tmp_path / "model.onnx", spec)
    ex.check_onnx(path, spec, module.with_template)
    return module, path, spec


def run_graph(runtime: str, path: Path, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    """One run of the ONNX file in ONNX Runtime, in OpenVINO reading the ONNX directly (as the daemon's openvino
    backend does with an onnxruntime artifact), or in OpenVINO on the IR converted from it (``openvino_ir``, as
    ``rddn compile --target openvino`` ships it)."""
    if runtime == "onnxruntime":
        return ex.run_onnxruntime(path, inputs)
    if runtime == "openvino_ir":
        path = path.with_suffix(".xml")
        if not path.is_file():
            openvino_ir.convert_to_ir(path.with_suffix(".onnx"), path)
    return openvino_ir.run_openvino(path, dict(zip(ex.INPUT_NAMES, (x.numpy() for x in inputs))), ex.OUTPUT_NAMES)


def _assert_parity(model: torch.nn.Module, module: ex.DetectorExport, path: Path, spec: ex.ExportSpec,
                   seeds=(1, 2), flat_template: bool = False, runtimes=RUNTIMES) -> None:
    for seed in seeds:
        for runtime in runtimes:
            _assert_parity_once(model, module, path, spec, seed, flat_template, runtime)


def _assert_parity_once(model: torch.nn.Module, module: ex.DetectorExport, path: Path, spec: ex.ExportSpec,
                        seed: int, flat_template: bool, runtime: str) -> None:
    inputs = ex.example_inputs(spec, module.with_template, seed=seed)
    if flat_template:  # every region differs from a flat template: TR-Post keeps clear detections
        inputs = (inputs[0], torch.full_like(inputs[0], 128.0))
    eager = ex.eager_detections(model, inputs, spec.tr_post)
    exported = ex.unpack_outputs(run_graph(runtime, path, inputs))
    assert len(eager["scores"]) > 0, "no detections: parity would prove nothing"
    # a candidate within float rounding of the 0.01 threshold may fall either way on another CPU's kernels
    assert abs(len(exported["scores"]) - len(eager["scores"])) <= 1
    report = ex.compare_detections(eager, exported, top=20)
    assert report.matched == report.compared, (runtime, report.unmatched)
    assert report.max_box_diff < BOX_TOL_PX, (runtime, report.summary())
    assert report.max_score_diff < SCORE_TOL, (runtime, report.summary())
    # the padded tail is all zeros and the valid rows are sorted by score, as the daemon expects
    assert np.all(np.diff(exported["scores"]) <= 1e-7)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_cpu_runtimes_match_eager(name: str, tmp_path: Path) -> None:
    model = tiny_model(CONFIGS[name])
    module, path, spec = _export(model, tmp_path)
    assert module.with_template == model.config.reference.needs_template
    # the IR for one configuration per architecture (the compile test covers the path end to end)
    _assert_parity(model, module, path, spec, runtimes=RUNTIMES + (("openvino_ir",) if name in IR_CHECKED else ()))


def test_tr_post_compiled_in_takes_a_template_and_matches_eager(tmp_path: Path) -> None:
    model = tiny_model({"context": {"enabled": True}})
    module, path, spec = _export(model, tmp_path, tr_post=True)
    assert [i.name for i in onnx.load(str(path)).graph.input] == ["image", "template"]
    _assert_parity(model, module, path, spec, seeds=(3,), flat_template=True)
    # TR-Post really rescored: the same frame without it gives other scores
    inputs = (ex.example_inputs(spec, True, seed=3)[0], torch.full((1, 3) + SIZE, 128.0))
    plain = ex.eager_detections(model, inputs, tr_post=False)
    rescored = ex.eager_detections(model, inputs, tr_post=True)
    assert not np.allclose(np.sort(plain["scores"])[-5:], np.sort(rescored["scores"])[-5:])


def test_outputs_follow_the_artifact_contract(tmp_path: Path) -> None:
    model = tiny_model(CONFIGS["faster_cr"])
    module, path, spec = _export(model, tmp_path)
    boxes, scores, labels, counts = ex.run_onnxruntime(path, ex.example_inputs(spec, False, seed=4))
    dmax = model.config.roi_head.detections_per_img
    assert boxes.shape == (1, dmax, 4) and boxes.dtype == np.float32
    assert scores.shape == (1, dmax) and labels.shape == (1, dmax) and labels.dtype == np.int64
    assert counts.shape == (1,) and counts.dtype == np.int64
    n = int(counts[0])
    assert 0 < n <= dmax
    assert labels[0, :n].min() >= 0 and labels[0, :n].max() < model.config.num_classes  # 0-based
    assert np.all(scores[0, :n] > model.config.roi_head.score_thresh)
    assert np.all(boxes[0, :n, 2] <= SIZE[1]) and np.all(boxes[0, :n, 0] >= 0)
    assert not boxes[0, n:].any() and not scores[0, n:].any()


def test_graph_uses_standard_onnx_ops_only(tmp_path: Path) -> None:
    model = tiny_model(CONFIGS["cascade_cr"])
    _, path, _ = _export(model, tmp_path)
    nodes = list(iter_nodes(onnx.load(str(path)).graph))
    assert {node.domain for node in nodes} <= {"", "ai.onnx"}
    # no scripted control flow: torchvision's empty-input NMS branch (an If) is what OpenVINO got wrong
    assert "If" not in {node.op_type for node in nodes}
    assert {"RoiAlign", "NonMaxSuppression"} <= {node.op_type for node in nodes}
    for node in nodes:
        if node.op_type == "RoiAlign":
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs["coordinate_transformation_mode"] == b"half_pixel"  # aligned=True
            assert attrs["sampling_ratio"] == 2 and attrs["output_height"] == 7


def test_fixed_count_rpn_pads_with_boxes_that_never_become_detections() -> None:
    model = tiny_model(CONFIGS["faster_padded_proposals"])
    spec = ex.ExportSpec(input_size=SIZE)
    module = ex.build_export_module(model, spec)
    image = ex.example_inputs(spec, False, seed=6)[0]
    with torch.no_grad():
        features, _ = module.model.extract_features(image, None)
        from collections import OrderedDict

        from torchvision.models.detection.image_list import ImageList

        feats = OrderedDict((str(i), f) for i, f in enumerate(features))
        padded, _ = module.model.rpn(ImageList(image, [SIZE]), feats)
        plain, _ = model.rpn(ImageList(image, [SIZE]), feats)
    assert padded[0].shape[0] == 2000 > plain[0].shape[0] > 0
    torch.testing.assert_close(padded[0][: plain[0].shape[0]], plain[0])
    assert not padded[0][plain[0].shape[0]:].any()
    assert model.rpn.__class__ is not module.model.rpn.__class__  # the caller's model is untouched


def test_bad_export_specs_are_rejected() -> None:
    with pytest.raises(ValueError, match="multiples of 32"):
        ex.ExportSpec(input_size=(100, 128))
    with pytest.raises(ValueError, match="opset"):
        ex.ExportSpec(input_size=SIZE, opset=13)
    with pytest.raises(ValueError, match="fp32"):
        ex.ExportSpec(input_size=SIZE, precision="fp16")


def test_dcn_backbone_exports_as_onnx_deformconv_and_matches_eager(tmp_path: Path) -> None:
    from torchvision.ops import DeformConv2d

    model = tiny_model({"backbone": {"depth": 50, "width": 16, "dcn": True}, "context": {"enabled": True}})
    with torch.no_grad():  # the offset convs start at zero (a plain conv): give them real offsets
        for module in model.modules():
            if isinstance(module, DeformConv2d):
                module.conv_offset.weight.normal_(0.0, 0.05)
    module, path, spec = _export(model, tmp_path)
    proto = onnx.load(str(path))
    assert sum(n.op_type == "DeformConv" for n in iter_nodes(proto.graph)) == 13  # layer2..4 3x3 convs (4+6+3)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= ex.DEFORM_CONV_OPSET
    _assert_parity(model, module, path, spec, seeds=(1,), runtimes=RUNTIMES + ("openvino_ir",))


def test_frame_without_detections_gives_zero_count(tmp_path: Path) -> None:
    """Most production frames are defect-free: a graph traced on a frame WITH detections must give an empty,
    well-formed result when every candidate falls below the score threshold (no baked-in count, no error)."""
    from onnx import numpy_helper

    model = tiny_model(CONFIGS["faster_cr"])
    _, path, spec = _export(model, tmp_path)
    inputs = ex.example_inputs(spec, False, seed=1)
    assert int(ex.run_onnxruntime(path, inputs)[3][0]) > 0
    proto = onnx.load(str(path))
    biased = 0
    for init in proto.graph.initializer:  # background logit +50: every class score << 0.01
        if init.name.endswith("box_predictor.cls_score.bias"):
            bias = numpy_helper.to_array(init).copy()
            bias[0] = 50.0
            init.CopyFrom(numpy_helper.from_array(bias, init.name))
            biased += 1
    assert biased == 1
    quiet = tmp_path / "quiet.onnx"
    onnx.save(proto, str(quiet))
    for runtime in RUNTIMES:
        boxes, scores, labels, counts = run_graph(runtime, quiet, inputs)
        assert counts.tolist() == [0] and not boxes.any() and not scores.any(), runtime
        assert boxes.shape == (1, model.config.roi_head.detections_per_img, 4)
