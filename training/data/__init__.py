"""Datasets for RDDN: readers (DeepPCB, Tianchi Fabric/Aluminum, COCO, synthetic), paired transforms, batching.

Importing this package stays torch-free (the daemon imports ``training.data.synthetic``); ``build_dataset``,
``collate_batch`` and ``DataConfig`` are loaded from ``training.data.dataset`` on first use.
"""
from __future__ import annotations

from typing import Any

from training.data.sample import Sample

_LAZY = {
    "DataConfig": "training.data.dataset",
    "build_dataset": "training.data.dataset",
    "build_reader": "training.data.dataset",
    "collate_batch": "training.data.dataset",
    "DetectionDataset": "training.data.dataset",
    "Batch": "training.data.dataset",
}

__all__ = ["Sample", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'training.data' has no attribute {name!r}")
