"""Evaluation (contract 4): ``evaluate(preds, gts, class_names) -> dict`` and ``write_report(out_dir, ...)``.

Imports are lazy so ``import training.evaluation`` stays cheap (matplotlib/pycocotools load on use).
"""
from __future__ import annotations

from typing import Any

_LAZY = {
    "evaluate": "training.evaluation.metrics",
    "box_iou": "training.evaluation.metrics",
    "voc_ap": "training.evaluation.metrics",
    "deeppcb_metrics": "training.evaluation.metrics",
    "coco_metrics": "training.evaluation.cocoeval",
    "write_report": "training.evaluation.report",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'training.evaluation' has no attribute {name!r}")
