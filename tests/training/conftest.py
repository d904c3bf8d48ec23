"""Tiny real RDDN + synthetic data configs for the training tests (a few ms per step on one CPU thread)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch


def tiny_config_dict(output_dir: Path, **top: Any) -> dict[str, Any]:
    """A complete training config: RDDN TR-Pre + CR on a width-8 ResNet-18, 64 px synthetic PCB frames."""
    raw: dict[str, Any] = {
        "name": "tiny",
        "output_dir": str(output_dir),
        "model": {
            "class_names": ["spot", "scratch", "hole", "open", "short"],
            "backbone": {"depth": 18, "width": 8, "norm": "gn", "frozen_stages": 0},
            "fpn": {"out_channels": 16},
            "rpn": {
                "anchor_sizes": [8, 16, 32, 64], "batch_size_per_image": 32, "pre_nms_top_n_train": 100,
                "post_nms_top_n_train": 32, "pre_nms_top_n_test": 100, "post_nms_top_n_test": 32,
            },
            "roi_head": {"representation_size": 32, "batch_size_per_image": 16, "detections_per_img": 20},
            "reference": {"input": "tr_pre"},
            "context": {"enabled": True},
        },
        "data": {
            "train": {
                "format": "synthetic",
                "synthetic": {"height": 64, "width": 64, "positions": 2, "defect_size": [4, 16], "max_shift": 1},
                "synthetic_samples": 8,
                "synthetic_val_samples": 3,
                "train_short_size": [64, 64], "train_max_size": 64, "test_short_size": 64, "test_max_size": 64,
            }
        },
        "optimizer": {"base_lr": 0.01, "grad_clip_norm": 5.0},
        "schedule": {"epochs": 2, "milestones": [1], "warmup_iters": 2},
        "batch_size": 2,
        "workers": 0,
        "eval_every_epochs": 0,
        "progress_bar": False,
        "device": "cpu",
    }
    raw.update(top)
    return raw


@pytest.fixture
def tiny_config(tmp_path: Path) -> Callable[..., dict[str, Any]]:
    torch.set_num_threads(1)

    def make(name: str = "run", **top: Any) -> dict[str, Any]:
        return tiny_config_dict(tmp_path / name, **top)

    return make
