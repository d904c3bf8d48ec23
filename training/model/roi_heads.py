"""RoI heads for Faster R-CNN (one stage) and Cascade R-CNN (several), one configurable class.

Training, per stage: add the ground truths to the proposals, label each by max IoU against the stage's threshold
(Faster 0.5; cascade 0.4/0.5/0.6), sample 512 RoIs with at most 25% positives, softmax CE + smooth-L1 on the
class-specific deltas of positives; the next cascade stage samples from this stage's refined, detached boxes.
Inference: each stage re-scores the previous stage's refined boxes, the class scores are the mean of all
stages' softmax, boxes come from the last stage's regression; optional TR-Post rescoring; then per-class NMS 0.5,
score > 0.01, top 100 per image.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler, BoxCoder
from torchvision.ops import batched_nms, box_iou, remove_small_boxes

from training.model.box_head import BoxPredictor, RegionFeatureHead
from training.model.config import ModelConfig
from training.model.roi_pooling import RoIFeaturePooler
from training.model.roi_semantics import ROI_ALIGN
from training.model.tr_post import tr_post_scores

#: smooth-L1 transition point of the box loss (torchvision's Fast R-CNN value).
SMOOTH_L1_BETA = 1.0 / 9.0


@dataclass(frozen=True)
class StageSpec:
    """What distinguishes one (cascade) stage: its positive IoU threshold, delta weights and loss weight."""

    iou_thresh: float
    reg_weights: tuple[float, float, float, float]
    loss_weight: float


@dataclass
class SampledRoIs:
    """One stage's training RoIs, per image: boxes [S, 4], labels [S] (0 = bg), IoU with the matched GT [S],
    regression targets [S, 4] (zeros for negatives)."""

    boxes: list[Tensor]
    labels: list[Tensor]
    ious: list[Tensor]
    regression_targets: list[Tensor]


def stage_specs(cfg: ModelConfig) -> list[StageSpec]:
    """Faster: one stage from ``roi_head``; Cascade: one per ``cascade`` threshold."""
    if cfg.architecture == "faster":
        return [StageSpec(cfg.roi_head.fg_iou_thresh, cfg.roi_head.bbox_reg_weights, 1.0)]
    c = cfg.cascade
    return [StageSpec(t, w, lw) for t, w, lw in zip(c.iou_thresholds, c.bbox_reg_weights, c.stage_loss_weights)]


class RoIHeadStage(nn.Module):
    """Region feature head + predictor + the box coder of one stage."""

    def __init__(self, in_channels: int, representation_size: int, num_classes: int, spec: StageSpec) -> None:
        super().__init__()
        self.spec = spec
        self.box_head = RegionFeatureHead(in_channels, ROI_ALIGN.output_size, representation_size)
        self.box_predictor = BoxPredictor(representation_size, num_classes + 1)
        self.box_coder = BoxCoder(spec.reg_weights)

    def forward(self, pooled: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """-> (region features [R, D], class logits [R, C+1], deltas [R, 4 (C+1)])."""
        region = self.box_head(pooled)
        logits, deltas = self.box_predictor(region)
        return region, logits, deltas

    def decode(self, deltas: Tensor, boxes: Tensor) -> Tensor:
        """Class-specific boxes [R, C+1, 4] from deltas [R, 4 (C+1)] applied to ``boxes`` [R, 4]; always float32
        (under autocast the deltas are fp16, which is too coarse for pixel coordinates of large images)."""
        return self.box_coder.decode_single(deltas.float(), boxes.float()).view(boxes.shape[0], -1, 4)


def clip_boxes(boxes: Tensor, sizes: Tensor) -> Tensor:
    """Clip boxes [..., 4] to per-row (height, width) ``sizes`` [R, 2] (R = boxes.shape[0]); export-friendly."""
    shape = (-1,) + (1,) * (boxes.dim() - 2)
    height = sizes[:, 0].to(boxes.dtype).view(shape)
    width = sizes[:, 1].to(boxes.dtype).view(shape)
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(
        (x1.clamp(min=0).minimum(width), y1.clamp(min=0).minimum(height),
         x2.clamp(min=0).minimum(width), y2.clamp(min=0).minimum(height)),
        dim=-1,
    )


def to_rois(boxes: Sequence[Tensor]) -> Tensor:
    """Per-image boxes -> [R, 5] RoIs with the batch index first (torchvision.ops.roi_align's layout)."""
    indices = [torch.full_like(b[:, :1], float(i)) for i, b in enumerate(boxes)]
    return torch.cat((torch.cat(indices), torch.cat(list(boxes))), dim=1)


def select_class_boxes(class_boxes: Tensor, classes: Tensor) -> Tensor:
    """Pick each row's box of the given class: [R, C+1, 4], [R] -> [R, 4]."""
    index = classes.view(-1, 1, 1).expand(-1, 1, 4)
    return class_boxes.gather(1, index)[:, 0]  # not squeeze(1): that exports as an If on a dynamic shape


class RoIHeads(nn.Module):
    """All RoI-head stages of the detector (1 for Faster R-CNN, 3 for Cascade R-CNN) and their shared pooler."""

    def __init__(self, cfg: ModelConfig, in_channels: int) -> None:
        super().__init__()
        context = cfg.context.mode if cfg.context.enabled else "none"
        self.pooler = RoIFeaturePooler(context, cfg.context.k)
        pooled_channels = in_channels * self.pooler.channel_multiplier()
        rh = cfg.roi_head
        self.num_classes = cfg.num_classes
        self.stages = nn.ModuleList(
            RoIHeadStage(pooled_channels, rh.representation_size, cfg.num_classes, spec) for spec in stage_specs(cfg)
        )
        self.sampler = BalancedPositiveNegativeSampler(rh.batch_size_per_image, rh.positive_fraction)
        self.score_thresh = rh.score_thresh
        self.nms_thresh = rh.nms_thresh
        self.detections_per_img = rh.detections_per_img

    # ----------------------------------------------------------------------------------------------- training
    def sample_proposals(
        self, proposals: Sequence[Tensor], targets: Sequence[dict[str, Tensor]], stage: RoIHeadStage
    ) -> SampledRoIs:
        """Max-IoU labelling at ``stage.spec.iou_thresh`` (GT boxes added as proposals), balanced sampling."""
        out = SampledRoIs([], [], [], [])
        for props, target in zip(proposals, targets):
            gt_boxes = target["boxes"].to(props)
            gt_labels = target["labels"].to(props.device, torch.int64)
            boxes = torch.cat((props, gt_boxes))
            if gt_boxes.shape[0] == 0:
                ious = boxes.new_zeros(boxes.shape[0])
                matched = torch.zeros(boxes.shape[0], dtype=torch.int64, device=boxes.device)
                labels = torch.zeros_like(matched)
            else:
                ious, matched = box_iou(gt_boxes, boxes).max(dim=0)
                labels = torch.where(ious >= stage.spec.iou_thresh, gt_labels[matched], torch.zeros_like(matched))
            pos_mask, neg_mask = self.sampler([labels])
            keep = torch.where(pos_mask[0].bool() | neg_mask[0].bool())[0]
            boxes, labels, ious, matched = boxes[keep], labels[keep], ious[keep], matched[keep]
            targets_reg = boxes.new_zeros(boxes.shape)
            pos = torch.where(labels > 0)[0]
            if pos.numel() > 0:
                targets_reg[pos] = stage.box_coder.encode_single(gt_boxes[matched[pos]], boxes[pos])
            out.boxes.append(boxes)
            out.labels.append(labels)
            out.ious.append(ious)
            out.regression_targets.append(targets_reg)
        return out

    @staticmethod
    def stage_losses(logits: Tensor, deltas: Tensor, labels: Tensor, regression_targets: Tensor) -> tuple[Tensor, Tensor]:
        """Softmax CE over all sampled RoIs; smooth-L1 on the GT class's deltas of positives, / number sampled."""
        loss_cls = F.cross_entropy(logits.float(), labels)
        pos = torch.where(labels > 0)[0]
        deltas = deltas.float().view(deltas.shape[0], -1, 4)[pos, labels[pos]]
        loss_box = F.smooth_l1_loss(deltas, regression_targets[pos], beta=SMOOTH_L1_BETA, reduction="sum")
        return loss_cls, loss_box / max(labels.numel(), 1)

    def _loss_names(self, index: int) -> tuple[str, str]:
        if len(self.stages) == 1:
            return "loss_cls", "loss_box_reg"
        return f"loss_cls_stage{index}", f"loss_box_reg_stage{index}"

    def forward_train(
        self,
        features: Sequence[Tensor],
        proposals: Sequence[Tensor],
        image_sizes: Tensor,
        targets: Sequence[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        losses: dict[str, Tensor] = {}
        boxes = [p.detach().float() for p in proposals]
        for index, stage in enumerate(self.stages):
            sampled = self.sample_proposals(boxes, targets, stage)
            rois = to_rois(sampled.boxes)
            _, logits, deltas = stage(self.pooler(features, rois, image_sizes))
            labels = torch.cat(sampled.labels)
            loss_cls, loss_box = self.stage_losses(logits, deltas, labels, torch.cat(sampled.regression_targets))
            name_cls, name_box = self._loss_names(index)
            losses[name_cls] = stage.spec.loss_weight * loss_cls
            losses[name_box] = stage.spec.loss_weight * loss_box
            if index + 1 < len(self.stages):
                with torch.no_grad():  # refine with the GT class for positives, the predicted class otherwise
                    predicted = logits[:, 1:].argmax(dim=1) + 1
                    classes = torch.where(labels > 0, labels, predicted)
                    refined = select_class_boxes(stage.decode(deltas, rois[:, 1:]), classes)
                    refined = clip_boxes(refined, image_sizes[rois[:, 0].long()])
                boxes = list(refined.split([b.shape[0] for b in sampled.boxes]))
        return losses

    # ---------------------------------------------------------------------------------------------- inference
    def forward_test(
        self,
        features: Sequence[Tensor],
        proposals: Sequence[Tensor],
        image_sizes: Tensor,
        template_features: Sequence[Tensor] | None = None,
    ) -> list[dict[str, Tensor]]:
        """Detections per image; ``template_features`` given -> TR-Post rescoring with the last stage's F_I/F_T."""
        counts = [p.shape[0] for p in proposals]
        rois = to_rois([p.float() for p in proposals])
        roi_sizes = image_sizes[rois[:, 0].long()]
        stage_scores = []
        region = deltas = None
        for index, stage in enumerate(self.stages):
            region, logits, deltas = stage(self.pooler(features, rois, image_sizes))
            probs = F.softmax(logits.float(), dim=1)
            stage_scores.append(probs)
            if index + 1 < len(self.stages):
                classes = probs[:, 1:].argmax(dim=1) + 1
                refined = clip_boxes(select_class_boxes(stage.decode(deltas, rois[:, 1:]), classes), roi_sizes)
                rois = torch.cat((rois[:, :1], refined.detach()), dim=1)
        assert region is not None and deltas is not None
        scores = torch.stack(stage_scores).mean(dim=0)
        if template_features is not None:
            template_region = self.stages[-1].box_head(self.pooler(template_features, rois, image_sizes))
            scores = tr_post_scores(scores, region, template_region)
        boxes = clip_boxes(self.stages[-1].decode(deltas, rois[:, 1:]), roi_sizes)
        return [
            self.postprocess(b, s)
            for b, s in zip(boxes.split(counts), scores.split(counts))
        ]

    def postprocess(self, class_boxes: Tensor, scores: Tensor) -> dict[str, Tensor]:
        """One image: drop background, score > thresh, per-class NMS, top ``detections_per_img`` by score."""
        num_classes = scores.shape[1] - 1
        labels = torch.arange(1, num_classes + 1, device=scores.device).view(1, -1).expand(scores.shape[0], -1)
        boxes = class_boxes[:, 1:].reshape(-1, 4)
        scores = scores[:, 1:].reshape(-1)
        labels = labels.reshape(-1)
        keep = torch.where(scores > self.score_thresh)[0]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = remove_small_boxes(boxes, min_size=1e-2)
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
        return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}
