"""Fixture writers for the reader tests: tiny datasets in each published layout, written per test."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import cv2
import numpy as np
import pytest


def _write_image(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(path.suffix, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert ok
    buf.tofile(str(path))  # works for non-ASCII paths too
    return path


@pytest.fixture
def write_image() -> Callable[[Path, np.ndarray], Path]:
    return _write_image


def solid(h: int, w: int, rgb: tuple[int, int, int]) -> np.ndarray:
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = rgb
    return img


@pytest.fixture
def deeppcb_root(tmp_path: Path) -> Path:
    """Two groups, 3 pairs: one defective, one normal (empty annotation file), one with two boxes.

    The list file's last line has no newline, as the published trainval.txt.
    """
    root = tmp_path / "deeppcb"
    pairs = {
        ("00041", "00041000"): "10 20 30 40 1\n50 40 70 60 6\n",
        ("00041", "00041001"): "",
        ("20085", "20085000"): "5 5 25 25 3\n",
    }
    lines = []
    for (group, stem), ann in pairs.items():
        img_dir = root / f"group{group}" / group
        _write_image(img_dir / f"{stem}_test.jpg", solid(64, 96, (200, 200, 200)))
        _write_image(img_dir / f"{stem}_temp.jpg", solid(64, 96, (190, 190, 190)))
        ann_path = root / f"group{group}" / f"{group}_not" / f"{stem}.txt"
        ann_path.parent.mkdir(parents=True, exist_ok=True)
        ann_path.write_text(ann)
        lines.append(f"group{group}/{group}/{stem}.jpg group{group}/{group}_not/{stem}.txt")
    (root / "trainval.txt").write_text("\n".join(lines))
    return root
