"""RDDN: Faster/Cascade R-CNN + FPN with template reference (TR-Pre/Inter/Fuse/Post), PTG and context reference.

Forward contract (see the project brief, "MODEL contract"):
``model(images, templates=None, targets=None, image_sizes=None, tr_post=None)``
- images [N, 3, H, W] float32 RGB 0..255, zero-padded, H and W multiples of 32; templates the same or None;
- train mode -> dict of scalar losses; eval mode -> per image {"boxes" [D, 4], "scores" [D], "labels" [D] 1..C}.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import Tensor, nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead

from training.model.backbone import ResNetBackbone
from training.model.config import ModelConfig, check_tr_post_supported
from training.model.fpn import FPN
from training.model.references import PseudoTemplateGenerator, TemplateFusion, normalize, ptg_loss, tr_pre
from training.model.roi_heads import RoIHeads

#: the network's total stride: padded inputs must be multiples of it so every level lines up with its lateral.
SIZE_DIVISIBILITY = 32


def build_rpn(cfg: ModelConfig, in_channels: int) -> RegionProposalNetwork:
    """torchvision's RPN on P2..P5: one anchor size per level (32..256), 3 aspect ratios, paper's thresholds."""
    r = cfg.rpn
    anchors = AnchorGenerator(
        sizes=tuple((s,) for s in r.anchor_sizes), aspect_ratios=(tuple(r.aspect_ratios),) * len(r.anchor_sizes)
    )
    head = RPNHead(in_channels, anchors.num_anchors_per_location()[0])
    return RegionProposalNetwork(
        anchors,
        head,
        fg_iou_thresh=r.fg_iou_thresh,
        bg_iou_thresh=r.bg_iou_thresh,
        batch_size_per_image=r.batch_size_per_image,
        positive_fraction=r.positive_fraction,
        pre_nms_top_n={"training": r.pre_nms_top_n_train, "testing": r.pre_nms_top_n_test},
        post_nms_top_n={"training": r.post_nms_top_n_train, "testing": r.post_nms_top_n_test},
        nms_thresh=r.nms_thresh,
    )


class RDDN(nn.Module):
    """The Reference-based Defect Detection Network; every switch comes from ``config`` (a ModelConfig)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = ResNetBackbone(config.backbone)
        ref = config.reference
        channels = self.backbone.out_channels
        self.ptg = PseudoTemplateGenerator(channels, ref.ptg_hidden) if ref.feature == "ptg" else None
        fusion_mode = "tr_fuse" if ref.feature == "tr_fuse" else "tr_inter"
        self.template_fusion = TemplateFusion(fusion_mode, channels) if ref.feature != "none" else None
        self.fpn = FPN(channels, config.fpn)
        self.rpn = build_rpn(config, config.fpn.out_channels)
        self.roi_heads = RoIHeads(config, config.fpn.out_channels)

    # ------------------------------------------------------------------------------------------ features
    def _normalize(self, images: Tensor, templates: Tensor | None) -> Tensor:
        if self.config.reference.input == "tr_pre":
            assert templates is not None
            return tr_pre(images, templates, self.config.pixel_std)
        return normalize(images, self.config.pixel_mean, self.config.pixel_std)

    def extract_features(
        self, images: Tensor, templates: Tensor | None, valid_mask: Tensor | None = None
    ) -> tuple[list[Tensor], tuple[list[Tensor], list[Tensor]] | None]:
        """P2..P5 for a batch, plus (C_i, G_i(C_i)) when PTG is on (its loss needs both).

        ``valid_mask`` [N, 1, H, W] zeroes the padding after mean/std normalisation (padding must read as "no
        signal", 0, as it does under TR-Pre).
        """
        ref = self.config.reference
        x = self._normalize(images, templates)
        if valid_mask is not None:
            x = x * valid_mask
        ptg_pairs = None
        if ref.feature in ("tr_inter", "tr_fuse"):
            assert templates is not None and self.template_fusion is not None
            t = normalize(templates, self.config.pixel_mean, self.config.pixel_std)
            if valid_mask is not None:
                t = t * valid_mask
            both = self.backbone(torch.cat((x, t)))  # one pass, shared weights
            c_image = [f[: images.shape[0]] for f in both]
            c_template = [f[images.shape[0] :] for f in both]
            c = self.template_fusion(c_image, c_template)
        elif ref.feature == "ptg":
            assert self.ptg is not None and self.template_fusion is not None
            c_image = self.backbone(x)
            pseudo = self.ptg(c_image)
            ptg_pairs = (c_image, pseudo)
            c = self.template_fusion(c_image, pseudo)
        else:
            c = self.backbone(x)
        return self.fpn(c), ptg_pairs

    # ------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        images: Tensor,
        templates: Tensor | None = None,
        targets: Sequence[dict[str, Tensor]] | None = None,
        image_sizes: Sequence[tuple[int, int]] | None = None,
        tr_post: bool | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        self._check_inputs(images, templates, targets, image_sizes)
        n, _, height, width = images.shape
        sizes_list = [(int(h), int(w)) for h, w in image_sizes] if image_sizes is not None else [(height, width)] * n
        sizes = torch.tensor(sizes_list, dtype=torch.int64, device=images.device)
        valid_mask = None
        if any(s != (height, width) for s in sizes_list):
            rows = torch.arange(height, device=images.device).view(1, -1, 1) < sizes[:, 0].view(-1, 1, 1)
            cols = torch.arange(width, device=images.device).view(1, 1, -1) < sizes[:, 1].view(-1, 1, 1)
            valid_mask = (rows & cols).unsqueeze(1).to(images.dtype)
        features, ptg_pairs = self.extract_features(images, templates, valid_mask)
        feature_dict = OrderedDict((str(i), f) for i, f in enumerate(features))
        image_list = ImageList(images, sizes_list)
        if self.training:
            assert targets is not None
            rpn_targets = [{"boxes": t["boxes"].to(images)} for t in targets]
            proposals, losses = self.rpn(image_list, feature_dict, rpn_targets)
            losses = dict(losses)
            losses.update(self.roi_heads.forward_train(features, proposals, sizes, targets))
            if ptg_pairs is not None:
                is_normal = torch.stack([torch.as_tensor(t["is_normal"]).reshape(()) for t in targets])
                losses["loss_ptg"] = self.config.reference.ptg_loss_weight * ptg_loss(*ptg_pairs, is_normal)
            return losses
        proposals, _ = self.rpn(image_list, feature_dict)
        template_features = None
        if self._use_tr_post(tr_post, templates):
            assert templates is not None
            # F_T: the template goes the image's own path (backbone, PTG if any, FPN; the RoI head pools it at
            # the image's RoIs). Only models that take no template input get here, see _use_tr_post.
            template_features, _ = self.extract_features(templates, None, valid_mask)
        return self.roi_heads.forward_test(features, proposals, sizes, template_features)

    def _use_tr_post(self, tr_post: bool | None, templates: Tensor | None) -> bool:
        """TR-Post runs when asked (argument, else config) and a template is there; an explicit request without a
        template is an error, a config default without one is skipped (the paper's plug-in behaviour).

        A model that takes the template as an input (TR-Pre, TR-Inter, TR-Fuse) cannot use it: it sees the
        template only through the image-template difference, so the template's own region features would be
        those of T - T, the same constant at every RoI, and the rescoring would carry no information."""
        if tr_post:
            check_tr_post_supported(self.config.reference)
        if tr_post is None:
            return self.config.reference.tr_post and templates is not None
        if tr_post and templates is None:
            raise ValueError("tr_post=True needs templates: TR-Post compares image and template region features")
        return tr_post

    def _check_inputs(
        self,
        images: Tensor,
        templates: Tensor | None,
        targets: Sequence[dict[str, Tensor]] | None,
        image_sizes: Sequence[tuple[int, int]] | None,
    ) -> None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [N, 3, H, W] RGB, got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"images must be a float tensor (0..255), got {images.dtype}")
        h, w = images.shape[-2:]
        if h % SIZE_DIVISIBILITY or w % SIZE_DIVISIBILITY:
            raise ValueError(f"images H, W must be multiples of {SIZE_DIVISIBILITY} (zero-pad), got {h}x{w}")
        if templates is not None and templates.shape != images.shape:
            raise ValueError(f"templates shape {tuple(templates.shape)} != images shape {tuple(images.shape)}")
        if templates is None and self.config.reference.needs_template:
            raise ValueError(
                f"this model (reference.input={self.config.reference.input}, reference.feature="
                f"{self.config.reference.feature}) needs a template for every image; templates=None"
            )
        if image_sizes is not None:
            if len(image_sizes) != images.shape[0]:
                raise ValueError(f"image_sizes has {len(image_sizes)} entries for {images.shape[0]} images")
            for ih, iw in image_sizes:
                if not (0 < ih <= h and 0 < iw <= w):
                    raise ValueError(f"image size ({ih}, {iw}) outside the padded batch {h}x{w}")
        if self.training:
            if targets is None or len(targets) != images.shape[0]:
                raise ValueError("training mode needs one target dict per image (boxes, labels, is_normal)")
            for i, t in enumerate(targets):
                missing = {"boxes", "labels"} - set(t)
                if missing:
                    raise ValueError(f"targets[{i}] lacks {sorted(missing)}")
                if self.config.reference.feature == "ptg" and "is_normal" not in t:
                    raise ValueError(f"targets[{i}] lacks 'is_normal' (the PTG loss needs it)")
                labels = t["labels"]
                if labels.numel() and (int(labels.min()) < 1 or int(labels.max()) > self.config.num_classes):
                    raise ValueError(
                        f"targets[{i}]['labels'] must be in 1..{self.config.num_classes}, got {labels.tolist()}"
                    )


def build_model(cfg: ModelConfig, load_pretrained: bool = True) -> RDDN:
    """Build RDDN from its config and load the configured pretrained weights (ImageNet backbone, then COCO).

    ``load_pretrained=False`` when every weight comes from a checkpoint anyway (evaluation, export): the
    pretrained files named in the config need not exist on that machine.
    """
    from training.model.weights import load_coco_detector, load_imagenet_backbone

    model = RDDN(cfg)
    if not load_pretrained:
        return model
    if cfg.backbone.pretrained is not None:
        load_imagenet_backbone(model.backbone, cfg.backbone.pretrained)
    if cfg.coco_pretrained is not None:
        load_coco_detector(model, cfg.coco_pretrained)
    return model
