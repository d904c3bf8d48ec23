"""Model configuration: every part of RDDN switchable from YAML, validated once at config time.

Defaults are the paper's settings (Zeng et al., TIP 2021, Sec. III-B/C). A configuration that cannot work
(e.g. TR-Pre together with TR-Inter, which would subtract the template twice) fails here with a message that
names the offending keys, never later inside a forward pass.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from training.model.roi_semantics import CONTEXT_SCALE

IMAGENET_MEAN: tuple[float, float, float] = (123.675, 116.28, 103.53)
IMAGENET_STD: tuple[float, float, float] = (58.395, 57.12, 57.375)


class StrictModel(BaseModel):
    """Base for config sections: unknown keys are errors (a typo must not silently become a default)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class BackboneConfig(StrictModel):
    """ResNet backbone. ``width`` < 64 builds a narrow ResNet for CPU demos and tests (no pretrained weights)."""

    depth: Literal[18, 34, 50, 101] = 50
    width: int = Field(64, ge=8, le=64)
    dcn: bool = False  # DCNv2 (modulated DeformConv2d) for the 3x3 convs of stages 3-5 ("-DCN")
    norm: Literal["frozen_bn", "bn", "gn"] = "frozen_bn"  # frozen_bn for pretrained, gn/bn from scratch
    frozen_stages: int = Field(1, ge=0, le=4)  # stem + stage 1 frozen, as the paper
    pretrained: Path | None = None  # local ImageNet ResNet state dict (torchvision layout)


class FPNConfig(StrictModel):
    """FPN, eq. (3). ``shared_output_conv``: the paper "follow[s] [34] to make all conv3x3 blocks share weights"
    (Sec. III-B.1), one 3x3 conv for P2..P5, the default here; ``false`` gives one 3x3 conv per level, as
    torchvision and mmdetection build it (and as COCO checkpoints hold it)."""

    out_channels: int = Field(256, ge=8)
    shared_output_conv: bool = True
    upsample: Literal["bilinear", "nearest"] = "bilinear"  # top-down path of eq. (3); the paper says bilinear


class RPNConfig(StrictModel):
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256)  # scale 8 on strides 4/8/16/32
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    fg_iou_thresh: float = 0.7
    bg_iou_thresh: float = 0.1
    batch_size_per_image: int = 256
    positive_fraction: float = 0.5
    nms_thresh: float = 0.7
    # pre_nms_top_n_*: per FPN level (torchvision's RPN); post_nms_top_n_*: per image, after NMS over all levels
    pre_nms_top_n_train: int = 20000
    post_nms_top_n_train: int = 2000
    pre_nms_top_n_test: int = 1000
    post_nms_top_n_test: int = 1000


class RoIHeadConfig(StrictModel):
    representation_size: int = 1024
    batch_size_per_image: int = 512
    positive_fraction: float = 0.25  # 128 of 512
    fg_iou_thresh: float = 0.5  # Faster R-CNN; cascade uses cascade_iou_thresholds
    bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    score_thresh: float = 0.01
    nms_thresh: float = 0.5
    detections_per_img: int = 100


class CascadeConfig(StrictModel):
    iou_thresholds: tuple[float, ...] = (0.4, 0.5, 0.6)
    stage_loss_weights: tuple[float, ...] = (1.0, 0.5, 0.25)
    bbox_reg_weights: tuple[tuple[float, float, float, float], ...] = (
        (10.0, 10.0, 5.0, 5.0),
        (20.0, 20.0, 10.0, 10.0),
        (30.0, 30.0, 15.0, 15.0),
    )

    @model_validator(mode="after")
    def _same_length(self) -> "CascadeConfig":
        n = len(self.iou_thresholds)
        if len(self.stage_loss_weights) != n or len(self.bbox_reg_weights) != n:
            raise ValueError(
                "cascade.iou_thresholds, cascade.stage_loss_weights and cascade.bbox_reg_weights "
                f"must have the same length (got {n}, {len(self.stage_loss_weights)}, {len(self.bbox_reg_weights)})"
            )
        return self


class ReferenceConfig(StrictModel):
    """Template reference (TR) and pseudo template generator (PTG).

    input:   ``mean_std`` -> (I - mean) / std;  ``tr_pre`` -> (I - T) / (2 * std)   (paper eq. 7)
    feature: ``none``; ``tr_inter`` -> FPN on C_i(I) - C_i(T) (eq. 9); ``tr_fuse`` -> FPN on
             conv1x1([C_i(I), C_i(I) - C_i(T)]) (beyond the paper); ``ptg`` -> FPN on C_i(I) - G_i(C_i(I)) (eq. 14)
    tr_post: rescore p * (1 - cos(F_I, F_T)) at inference (eq. 10); needs templates at inference only.
    """

    input: Literal["mean_std", "tr_pre"] = "mean_std"
    feature: Literal["none", "tr_inter", "tr_fuse", "ptg"] = "none"
    tr_post: bool = False
    ptg_hidden: int = Field(256, ge=8)
    ptg_loss_weight: float = Field(1.0, ge=0.0)

    @model_validator(mode="after")
    def _compatible(self) -> "ReferenceConfig":
        if self.input == "tr_pre" and self.feature in ("tr_inter", "tr_fuse"):
            raise ValueError(
                f"reference.input=tr_pre with reference.feature={self.feature}: TR-Pre already subtracts the "
                "template from the input, the template branch would see T - T = 0. Choose one."
            )
        if self.tr_post:
            check_tr_post_supported(self)
        if self.input == "tr_pre" and self.feature == "ptg":
            raise ValueError(
                "reference.input=tr_pre with reference.feature=ptg: PTG is for data without templates, "
                "TR-Pre needs a template for every image. Choose one."
            )
        return self

    @property
    def needs_template(self) -> bool:
        """True when the network itself cannot run without a template image."""
        return self.input == "tr_pre" or self.feature in ("tr_inter", "tr_fuse")


def check_tr_post_supported(reference: ReferenceConfig) -> None:
    """TR-Post compares F_I with F_T, the template's region features along the image's own path. A model that
    takes the template as an input (TR-Pre, TR-Inter, TR-Fuse) has no such path for the template alone: it would
    see T - T, and F_T would be one constant for every RoI. Raises ValueError naming the keys."""
    if reference.needs_template:
        raise ValueError(
            f"TR-Post (reference.tr_post / --tr-post) with reference.input={reference.input}, "
            f"reference.feature={reference.feature}: this model sees the template only through the image-template difference, so the template's own region features "
            "would be those of T - T (one constant for every RoI). TR-Post is for models without a template "
            "input (reference.input=mean_std with feature none or ptg)."
        )


class ContextConfig(StrictModel):
    """Context reference (CR): pool the concentric k-scaled box too and concatenate (``concat``), or use the
    context features alone (``context_only``, the paper's CR* ablation)."""

    enabled: bool = False
    k: float = Field(CONTEXT_SCALE, gt=1.0)
    mode: Literal["concat", "context_only"] = "concat"


class ModelConfig(StrictModel):
    """The whole detector. ``class_names`` excludes background; label 0 is background inside the model."""

    architecture: Literal["faster", "cascade"] = "faster"
    class_names: tuple[str, ...]
    backbone: BackboneConfig = BackboneConfig()
    fpn: FPNConfig = FPNConfig()
    rpn: RPNConfig = RPNConfig()
    roi_head: RoIHeadConfig = RoIHeadConfig()
    cascade: CascadeConfig = CascadeConfig()
    reference: ReferenceConfig = ReferenceConfig()
    context: ContextConfig = ContextConfig()
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD
    coco_pretrained: Path | None = None  # local torchvision Faster R-CNN checkpoint; cls/reg layers dropped

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @model_validator(mode="after")
    def _validate(self) -> "ModelConfig":
        if not self.class_names:
            raise ValueError("class_names must list at least one defect class")
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names has duplicates: {self.class_names}")
        if len(self.rpn.anchor_sizes) != 4:
            raise ValueError("rpn.anchor_sizes needs one size per FPN level P2..P5 (4 values)")
        if self.backbone.dcn and self.backbone.depth < 50:
            raise ValueError("backbone.dcn needs a bottleneck ResNet (depth 50 or 101)")
        if self.backbone.pretrained and self.backbone.width != 64:
            raise ValueError("backbone.pretrained needs backbone.width=64 (torchvision's ResNet layout)")
        if self.coco_pretrained and self.backbone.width != 64:
            raise ValueError("coco_pretrained (a torchvision Faster R-CNN checkpoint) needs backbone.width=64")
        if self.context.mode == "context_only" and not self.context.enabled:
            raise ValueError("context.mode=context_only needs context.enabled=true")
        if self.rpn.bg_iou_thresh > self.rpn.fg_iou_thresh:
            raise ValueError(
                f"rpn.bg_iou_thresh ({self.rpn.bg_iou_thresh}) must not exceed rpn.fg_iou_thresh ({self.rpn.fg_iou_thresh})"
            )
        return self
