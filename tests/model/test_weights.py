"""Pretrained weights from local files: ImageNet ResNet and torchvision's COCO Faster R-CNN layout."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models import resnet18
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from training.model import build_model
from training.model.config import ModelConfig
from training.model.weights import load_coco_detector, load_imagenet_backbone, read_state_dict


@pytest.fixture(scope="module")
def coco_file(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    state = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91).state_dict()
    path = tmp_path_factory.mktemp("coco") / "fasterrcnn_resnet50_fpn_coco.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("architecture", ["faster", "cascade"])
def test_coco_checkpoint_maps_onto_rddn_and_drops_class_layers(coco_file, architecture: str) -> None:
    path, state = coco_file
    model = build_model(ModelConfig(class_names=("a", "b"), architecture=architecture,
                                    fpn={"shared_output_conv": False}))  # torchvision's per-level 3x3 convs
    own = model.state_dict()
    report = load_coco_detector(model, path)
    own_after = model.state_dict()
    assert torch.equal(own_after["backbone.layer3.5.conv2.weight"], state["backbone.body.layer3.5.conv2.weight"])
    assert torch.equal(own_after["backbone.bn1.running_mean"], state["backbone.body.bn1.running_mean"])
    assert torch.equal(own_after["fpn.inner_blocks.2.weight"], state["backbone.fpn.inner_blocks.2.0.weight"])
    assert torch.equal(own_after["fpn.layer_blocks.3.bias"], state["backbone.fpn.layer_blocks.3.0.bias"])
    assert torch.equal(own_after["rpn.head.conv.0.0.weight"], state["rpn.head.conv.0.0.weight"])
    for stage in range(len(model.roi_heads.stages)):
        assert torch.equal(own_after[f"roi_heads.stages.{stage}.box_head.fc7.weight"],
                           state["roi_heads.box_head.fc7.weight"])
        predictor = f"roi_heads.stages.{stage}.box_predictor.cls_score.weight"
        assert torch.equal(own_after[predictor], own[predictor])  # left at its initialisation
    # the RPN objectness layer has the same shape (3 anchors) but is dropped anyway, as in the paper
    assert torch.equal(own_after["rpn.head.cls_logits.weight"], own["rpn.head.cls_logits.weight"])
    assert "rpn.head.cls_logits.weight" in report.skipped and "roi_heads.box_predictor.bbox_pred.weight" in report.skipped
    assert "dropped" in report.skipped["roi_heads.box_predictor.cls_score.weight"]
    stages = len(model.roi_heads.stages)
    dropped = ("rpn.head.cls_logits.", "rpn.head.bbox_pred.", "roi_heads.box_predictor.")
    expected = sum(stages if k.startswith("roi_heads.box_head.") else 1
                   for k in state if not k.startswith(dropped) and not k.endswith("num_batches_tracked"))
    assert len(report.loaded) == expected  # everything else found its place
    assert "roi_heads.stages.0.box_predictor.cls_score.weight" in report.missing


def test_coco_into_the_papers_shared_fpn_conv_uses_the_p2_conv(coco_file) -> None:
    path, state = coco_file
    model = build_model(ModelConfig(class_names=("a",)))
    assert model.fpn.shared_output_conv and len(model.fpn.layer_blocks) == 1  # the paper's default
    report = load_coco_detector(model, path)
    assert torch.equal(model.state_dict()["fpn.layer_blocks.0.weight"], state["backbone.fpn.layer_blocks.0.0.weight"])
    for level in (1, 2, 3):
        assert "shared by all levels" in report.skipped[f"backbone.fpn.layer_blocks.{level}.0.weight"]


def test_coco_into_context_model_skips_fc6_by_shape(coco_file) -> None:
    path, _ = coco_file
    model = build_model(ModelConfig(class_names=("a",), context={"enabled": True}))
    report = load_coco_detector(model, path)
    assert "shape" in report.skipped["roi_heads.stages.0.box_head.fc6.weight"]
    assert "roi_heads.stages.0.box_head.fc7.weight" in report.loaded


def test_build_model_loads_coco_from_config(coco_file) -> None:
    path, state = coco_file
    model = build_model(ModelConfig(class_names=("a",), coco_pretrained=path))
    assert torch.equal(model.state_dict()["backbone.conv1.weight"], state["backbone.body.conv1.weight"])


def test_imagenet_backbone_from_config(tmp_path: Path) -> None:
    state = resnet18(weights=None).state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    model = build_model(ModelConfig(class_names=("a",), backbone={"depth": 18, "pretrained": path}))
    assert torch.equal(model.backbone.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    report = load_imagenet_backbone(model.backbone, path)
    assert "fc.weight" in report.skipped and not report.missing


def test_imagenet_weights_of_another_depth_load_only_matching_tensors(tmp_path: Path) -> None:
    path = tmp_path / "r18.pth"
    torch.save(resnet18(weights=None).state_dict(), path)
    cfg = ModelConfig(class_names=("a",), backbone={"depth": 50, "width": 64})
    model = build_model(cfg)
    report = load_imagenet_backbone(model.backbone, path)  # stem matches, most blocks do not
    assert "conv1.weight" in report.loaded
    assert "shape" in report.skipped["layer1.0.conv1.weight"] and "layer1.0.conv3.weight" in report.missing


def test_missing_and_bad_weight_files_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        build_model(ModelConfig(class_names=("a",), backbone={"pretrained": missing}))
    # a checkpoint's config may name pretrained files that do not exist where it is evaluated
    assert build_model(ModelConfig(class_names=("a",), backbone={"depth": 18, "pretrained": missing}),
                       load_pretrained=False).backbone.out_channels[-1] == 512
    bad = tmp_path / "bad.pth"
    bad.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth"):
        read_state_dict(bad, "COCO Faster R-CNN")
    unrelated = tmp_path / "unrelated.pth"
    torch.save({"model": {"foo.weight": torch.zeros(2)}}, unrelated)
    with pytest.raises(ValueError, match="no tensor matches"):
        load_coco_detector(build_model(ModelConfig(class_names=("a",), backbone={"depth": 18})), unrelated)
