"""Shared helpers for the model tests: a TINY config (CPU, milliseconds per forward) and synthetic targets."""
from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

from training.engine.config import deep_merge
from training.model.config import ModelConfig


TINY: dict[str, Any] = {
    "class_names": ("bright", "dark"),
    "backbone": {"depth": 18, "width": 16, "norm": "gn", "frozen_stages": 0},
    "fpn": {"out_channels": 32},
    "rpn": {
        "anchor_sizes": (16, 32, 64, 128),
        "batch_size_per_image": 64,
        "pre_nms_top_n_train": 200,
        "post_nms_top_n_train": 100,
        "pre_nms_top_n_test": 200,
        "post_nms_top_n_test": 50,
    },
    "roi_head": {"representation_size": 64, "batch_size_per_image": 64},
    "reference": {"ptg_hidden": 16},
}


@pytest.fixture(autouse=True)
def _single_thread_and_seed() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.fixture
def tiny_config() -> Callable[..., ModelConfig]:
    """``tiny_config(architecture="cascade", context={"enabled": True})``: nested dicts override the TINY base."""

    def make(**overrides: Any) -> ModelConfig:
        return ModelConfig.model_validate(deep_merge(TINY, overrides))

    return make


@pytest.fixture
def targets() -> list[dict[str, torch.Tensor]]:
    """Two images: one defective (two boxes, both classes), one normal (no boxes)."""
    return [
        {
            "boxes": torch.tensor([[8.0, 8.0, 30.0, 24.0], [40.0, 30.0, 60.0, 60.0]]),
            "labels": torch.tensor([1, 2]),
            "is_normal": torch.tensor(False),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "is_normal": torch.tensor(True)},
    ]
