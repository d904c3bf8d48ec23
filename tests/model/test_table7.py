"""Every configuration of the paper's Table VII (Faster/Cascade x R50/R101 x DCN x TR-Pre/PTG x CR) builds and runs;
TR-Inter and TR-Fuse too; impossible combinations fail at config validation with the offending keys named.

Narrow networks (width 8) keep the depth, block type, DCN placement and head structure of the real thing at a
fraction of the CPU cost; one full-width R101-DCN Cascade PTG+CR model is built to check the real dimensions.
"""
from __future__ import annotations

import itertools

import pytest
import torch
from pydantic import ValidationError

from training.model import build_model
from training.model.backbone import ModulatedDeformConv3x3
from training.model.config import ModelConfig

TABLE7 = list(itertools.product(("faster", "cascade"), (50, 101), (False, True), ("tr_pre", "ptg")))


def _reference(kind: str) -> dict:
    return {"input": "tr_pre"} if kind == "tr_pre" else {"feature": kind, "ptg_hidden": 8}


@pytest.mark.parametrize("architecture, depth, dcn, reference", TABLE7)
def test_table7_combination_builds_and_detects(tiny_config, architecture, depth, dcn, reference) -> None:
    cfg = tiny_config(
        architecture=architecture,
        backbone={"depth": depth, "width": 8, "dcn": dcn},
        reference=_reference(reference),
        context={"enabled": True},
        rpn={"post_nms_top_n_test": 20},
    )
    model = build_model(cfg).eval()
    dcn_layers = sum(isinstance(m, ModulatedDeformConv3x3) for m in model.backbone.modules())
    assert dcn_layers == ((4 + (6 if depth == 50 else 23) + 3) if dcn else 0)
    assert len(model.roi_heads.stages) == (3 if architecture == "cascade" else 1)
    assert model.roi_heads.stages[0].box_head.fc6.in_features == 2 * 32 * 7 * 7  # CR doubles the channels
    images = torch.rand(1, 3, 64, 64) * 255
    with torch.no_grad():
        out = model(images, images.flip(-1) if reference == "tr_pre" else None)
    _assert_detections(out, num_images=1, num_classes=2)


def _assert_detections(out: list[dict], num_images: int, num_classes: int) -> None:
    """The eval-mode contract, with at least one detection per image (an untrained head scores every class)."""
    assert len(out) == num_images
    for det in out:
        assert set(det) == {"boxes", "scores", "labels"}
        count = det["scores"].shape[0]
        assert 0 < count <= 100 and det["boxes"].shape == (count, 4) and det["labels"].shape == (count,)
        assert bool(((det["labels"] >= 1) & (det["labels"] <= num_classes)).all())


@pytest.mark.parametrize("feature", ["tr_inter", "tr_fuse"])
def test_tr_inter_and_tr_fuse_build_with_any_backbone(tiny_config, feature) -> None:
    """R50-DCN with a template branch: detections follow the template; with template == image TR-Inter's network
    input C(I) - C(T) is exactly zero, so two different boards give the same output."""
    model = build_model(tiny_config(backbone={"depth": 50, "width": 8, "dcn": True}, reference={"feature": feature},
                                    rpn={"post_nms_top_n_test": 20})).eval()
    assert (model.template_fusion.fuse is not None) == (feature == "tr_fuse")
    torch.manual_seed(3)
    images = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        out = model(images, images * 0.5)
        other_template = model(images, images.flip(-1))
        self_template = model(images, images.clone())
    _assert_detections(out, num_images=2, num_classes=2)
    a, b = out[0]["scores"], other_template[0]["scores"]
    assert a.shape != b.shape or not torch.allclose(a, b)
    if feature == "tr_inter":
        assert torch.equal(self_template[0]["scores"], self_template[1]["scores"])
        assert torch.equal(self_template[0]["boxes"], self_template[1]["boxes"])


def test_full_width_r101_dcn_cascade_ptg_cr_has_the_papers_dimensions() -> None:
    cfg = ModelConfig(
        class_names=("a", "b", "c"),
        architecture="cascade",
        backbone={"depth": 101, "dcn": True},
        reference={"feature": "ptg"},
        context={"enabled": True},
        rpn={"post_nms_top_n_test": 8},
    )
    model = build_model(cfg).eval()
    assert model.backbone.out_channels == [256, 512, 1024, 2048]
    assert [g[0].in_channels for g in model.ptg.generators] == [256, 512, 1024, 2048]
    assert all(g[0].out_channels == 256 for g in model.ptg.generators)
    stage = model.roi_heads.stages[0]
    assert (stage.box_head.fc6.in_features, stage.box_head.fc6.out_features) == (2 * 256 * 49, 1024)
    assert stage.box_predictor.cls_score.out_features == 4 and stage.box_predictor.bbox_pred.out_features == 16
    n_params = sum(p.numel() for p in model.parameters())
    assert 150e6 < n_params < 250e6, n_params  # three 25088x1024 fc6 (CR) dominate: ~77M of them
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable < n_params  # stem + stage 1 frozen
    with torch.no_grad():
        out = model(torch.rand(1, 3, 64, 64) * 255)
    _assert_detections(out, num_images=1, num_classes=3)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"reference": {"input": "tr_pre", "feature": "tr_inter"}}, "reference.input=tr_pre"),
        ({"reference": {"input": "tr_pre", "feature": "tr_fuse"}}, "reference.input=tr_pre"),
        ({"reference": {"input": "tr_pre", "feature": "ptg"}}, "PTG is for data without templates"),
        ({"backbone": {"depth": 34, "dcn": True}}, "backbone.dcn"),
        ({"context": {"mode": "context_only"}}, "context.enabled"),
        ({"context": {"enabled": True, "k": 1.0}}, "greater than 1"),
        ({"cascade": {"iou_thresholds": (0.5, 0.6)}}, "same length"),
        ({"backbone": {"width": 16, "pretrained": "/x/resnet.pth"}}, "width=64"),
        ({"backbone": {"width": 16}, "coco_pretrained": "/x/coco.pth"}, "width=64"),
        ({"class_names": ("a", "a")}, "duplicates"),
        ({"class_names": ()}, "at least one"),
        ({"rpn": {"anchor_sizes": (32, 64, 128)}}, "4 values"),
        ({"fpn": {"upsample": "bicubic"}}, "upsample"),
        ({"roi_head": {"representaton_size": 64}}, "representaton_size"),
    ],
)
def test_invalid_configurations_fail_in_validation(overrides: dict, message: str) -> None:
    data = {"class_names": ("a",), **overrides}
    with pytest.raises(ValidationError, match=message):
        ModelConfig.model_validate(data)
