"""Pretrained weights from local files: ImageNet ResNet (torchvision layout) and COCO Faster R-CNN (torchvision's
``fasterrcnn_resnet50_fpn`` checkpoint). Nothing is downloaded; files load with ``weights_only=True``.

COCO: keys are mapped onto RDDN's names and loaded where the shapes match; the classification and regression
layers of the RPN and of the RoI head are dropped, as the paper does (Sec. III-C.2), because their shapes (or
meaning) follow COCO's 80 classes. Every call returns and logs what was loaded and what was skipped, and why.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

#: torchvision key pattern -> RDDN key (``{stage}`` expanded over the RoI-head stages).
_COCO_KEY_MAP: tuple[tuple[str, str], ...] = (
    (r"^backbone\.body\.", "backbone."),
    (r"^backbone\.fpn\.inner_blocks\.(\d+)\.0\.", r"fpn.inner_blocks.\1."),  # torchvision >= 0.13 layout
    (r"^backbone\.fpn\.layer_blocks\.(\d+)\.0\.", r"fpn.layer_blocks.\1."),
    (r"^backbone\.fpn\.inner_blocks\.(\d+)\.(weight|bias)$", r"fpn.inner_blocks.\1.\2"),  # older layout
    (r"^backbone\.fpn\.layer_blocks\.(\d+)\.(weight|bias)$", r"fpn.layer_blocks.\1.\2"),
    (r"^rpn\.head\.conv\.(weight|bias)$", r"rpn.head.conv.0.0.\1"),  # older RPNHead layout
    (r"^roi_heads\.box_head\.", "roi_heads.stages.{stage}.box_head."),
)
#: dropped on purpose (paper): the class-dependent layers of the RPN and the RoI head.
_COCO_DROPPED = re.compile(r"^(rpn\.head\.(cls_logits|bbox_pred)|roi_heads\.box_predictor)\.")


@dataclass
class LoadReport:
    """What a weight file contributed: loaded target keys, skipped source keys with a reason, untouched targets."""

    source: str
    loaded: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.source}: loaded {len(self.loaded)} tensors, skipped {len(self.skipped)}, "
            f"left at init {len(self.missing)}"
        )


def read_state_dict(path: Path | str, what: str) -> dict[str, Tensor]:
    """torch.load a local state dict (also accepts {"model": ...} / {"state_dict": ...} wrappers)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights file not found: {path} (nothing is downloaded; put the file there)")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f"cannot read {what} weights {path}: {exc}") from exc
    for key in ("model", "state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    if not isinstance(data, dict) or not all(isinstance(v, Tensor) for v in data.values()):
        raise ValueError(f"{what} weights {path} is not a state dict of tensors")
    return data


def _load_matching(module: nn.Module, mapped: dict[str, Tensor], report: LoadReport) -> LoadReport:
    target = module.state_dict()
    update = {}
    for key, value in mapped.items():
        if key not in target:
            counter = key.endswith("num_batches_tracked")
            report.skipped[key] = "BatchNorm step counter (not used)" if counter else "no such parameter in RDDN"
        elif target[key].shape != value.shape:
            report.skipped[key] = f"shape {tuple(value.shape)} != RDDN {tuple(target[key].shape)}"
        else:
            update[key] = value
    module.load_state_dict(update, strict=False)
    report.loaded = sorted(update)
    report.missing = sorted(k for k in target if k not in update and not k.endswith("num_batches_tracked"))
    log.info(report.summary())
    return report


def load_imagenet_backbone(backbone: nn.Module, path: Path | str) -> LoadReport:
    """ImageNet ResNet state dict (torchvision names; ``fc.*`` ignored) into ``ResNetBackbone``."""
    state = read_state_dict(path, "ImageNet backbone")
    report = LoadReport(source=str(path))
    mapped = {}
    for key, value in state.items():
        if key.startswith("fc."):
            report.skipped[key] = "ImageNet classifier"
        else:
            mapped[key] = value
    report = _load_matching(backbone, mapped, report)
    if not report.loaded:
        raise ValueError(f"ImageNet backbone weights {path}: no tensor matches the configured ResNet")
    return report


def map_coco_keys(
    state: dict[str, Tensor], num_stages: int, report: LoadReport, shared_fpn_output: bool = False
) -> dict[str, Tensor]:
    """torchvision Faster R-CNN keys -> RDDN keys; box-head FCs initialise every cascade stage. With
    ``shared_fpn_output`` (one 3x3 FPN conv for all levels) the P2 conv of the checkpoint initialises it."""
    mapped: dict[str, Tensor] = {}
    for key, value in state.items():
        if _COCO_DROPPED.match(key):
            report.skipped[key] = "class-specific layer dropped (paper Sec. III-C.2)"
            continue
        new = key
        for pattern, repl in _COCO_KEY_MAP:
            new = re.sub(pattern, repl, new)
        if shared_fpn_output and re.match(r"^fpn\.layer_blocks\.[1-9]", new):
            report.skipped[key] = "FPN 3x3 conv shared by all levels here (fpn.shared_output_conv): P2's sets it"
            continue
        targets = [new.format(stage=s) for s in range(num_stages)] if "{stage}" in new else [new]
        for target in targets:
            mapped[target] = value
    return mapped


def load_coco_detector(model: nn.Module, path: Path | str) -> LoadReport:
    """COCO torchvision Faster R-CNN checkpoint into RDDN where names and shapes match (see module docstring)."""
    state = read_state_dict(path, "COCO Faster R-CNN")
    report = LoadReport(source=str(path))
    num_stages = len(model.roi_heads.stages)  # type: ignore[union-attr]
    shared = bool(model.fpn.shared_output_conv)  # type: ignore[union-attr]
    report = _load_matching(model, map_coco_keys(state, num_stages, report, shared), report)
    if not report.loaded:
        raise ValueError(f"COCO weights {path}: no tensor matches RDDN (is it a torchvision Faster R-CNN file?)")
    return report
