"""A whole RDDN (tiny, CR on) exported as the TensorRT variant, its ``rddn`` nodes executed by the plugins'
CUDA source built for the CPU (``engines.host_kernels``), against PyTorch eager: the kernels' arithmetic inside
the real detector, checked without a GPU."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engines import custom_ops
from engines import export_onnx as ex
from training.model import build_model
from training.model.config import ModelConfig

torch.set_num_threads(1)
SIZE = (128, 96)


def _tiny_rddn() -> torch.nn.Module:
    config = ModelConfig.model_validate({
        "class_names": ["scratch", "dent"],
        "backbone": {"depth": 18, "width": 16},
        "fpn": {"out_channels": 32},
        "rpn": {"pre_nms_top_n_test": 300, "post_nms_top_n_test": 64},
        "roi_head": {"representation_size": 64},
        "context": {"enabled": True, "k": 1.5, "mode": "concat"},
    })
    torch.manual_seed(0)
    model = build_model(config).eval()
    with torch.no_grad():  # untrained heads score everything alike; spread the scores so detections exist
        for stage in model.roi_heads.stages:
            stage.box_predictor.cls_score.weight.normal_(0.0, 0.3)
    return model


@pytest.mark.parametrize("precision, top, box_tol, score_tol", [("fp32", 20, 1e-3, 1e-5), ("fp16", 10, 0.05, 5e-3)])
def test_detector_with_host_kernels_matches_pytorch(tmp_path: Path, precision: str, top: int, box_tol: float,
                                                    score_tol: float) -> None:
    model = _tiny_rddn()
    spec = ex.ExportSpec(input_size=SIZE, roi_ops="rddn", precision=precision)
    path = ex.export_onnx(ex.build_export_module(model, spec), tmp_path / "model.onnx", spec)
    inputs = ex.example_inputs(spec, False, seed=4)
    outputs = custom_ops.run_reference(path, {"image": inputs[0].numpy()}, implementation="host_kernels")
    eager = ex.eager_detections(model, inputs, tr_post=False)
    report = ex.compare_detections(eager, ex.unpack_outputs(outputs), top=top)
    assert report.compared > 0 and report.matched == report.compared, report.unmatched
    assert report.max_box_diff < box_tol and report.max_score_diff < score_tol, report.summary()
