"""The eval path stays traceable to standard ONNX (the export engineer builds the artifact on top of this) and
robust under mixed precision (autocast) training."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from training.model import build_model


class _FirstImage(torch.nn.Module):
    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor, template: torch.Tensor):
        det = self.model(image, template, tr_post=True)[0]
        return det["boxes"], det["scores"], det["labels"]


def test_cascade_ptg_cr_tr_post_traces_to_onnx_and_matches(tiny_config, tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    model = build_model(
        tiny_config(architecture="cascade", reference={"feature": "ptg"}, context={"enabled": True})
    ).eval()
    wrapper = _FirstImage(model).eval()
    image, template = torch.rand(1, 3, 64, 64) * 255, torch.rand(1, 3, 64, 64) * 255
    path = tmp_path / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (image, template), str(path), dynamo=False, opset_version=17,
                          input_names=["image", "template"], output_names=["boxes", "scores", "labels"])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    boxes, scores, labels = session.run(None, {"image": image.numpy(), "template": template.numpy()})
    with torch.no_grad():
        ref_boxes, ref_scores, ref_labels = wrapper(image, template)
    assert scores.shape[0] > 0 and scores.shape == tuple(ref_scores.shape)
    np.testing.assert_allclose(scores, ref_scores.numpy(), atol=1e-5)
    np.testing.assert_allclose(boxes, ref_boxes.numpy(), atol=1e-3)
    np.testing.assert_array_equal(labels, ref_labels.numpy())
    assert {"RoiAlign", "NonMaxSuppression"} <= _op_types(__import__("onnx").load(str(path)).graph)


def _op_types(graph) -> set[str]:
    """Op types of a graph including its If/Loop subgraphs (NMS sits inside batched_nms's empty-input If)."""
    ops = set()
    for node in graph.node:
        ops.add(node.op_type)
        for attribute in node.attribute:
            if attribute.g is not None and attribute.g.node:
                ops |= _op_types(attribute.g)
            for sub in attribute.graphs:
                ops |= _op_types(sub)
    return ops


def test_bfloat16_autocast_training_step_and_inference(tiny_config, targets) -> None:
    model = build_model(tiny_config(architecture="cascade", reference={"feature": "ptg"}, context={"enabled": True}))
    images = torch.rand(2, 3, 64, 64) * 255
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = model.train()(images, targets=targets)
        assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        with torch.no_grad():
            det = model.eval()(images)[0]
    assert det["boxes"].dtype == torch.float32 and det["scores"].dtype == torch.float32
