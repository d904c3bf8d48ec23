"""COCO reader: category ids -> stable 1..C, xywh -> x1y1x2y2, templates, normal images, crowd, errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.data.coco import CocoReader
from training.data.dataset import DataConfig


@pytest.fixture
def coco_root(tmp_path: Path, write_image) -> Path:
    root = tmp_path / "coco"
    for name in ("a.png", "b.png", "ta.png", "tb.png"):
        write_image(root / "imgs" / name, np.full((40, 50, 3), 90, np.uint8))
    data = {
        "images": [
            {"id": 7, "file_name": "a.png", "template_file_name": "ta.png", "width": 50, "height": 40},
            {"id": 9, "file_name": "b.png", "template_file_name": "tb.png", "width": 50, "height": 40},
        ],
        # listed out of id order on purpose: labels must follow ascending category id
        "categories": [{"id": 12, "name": "scratch"}, {"id": 3, "name": "dent"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 12, "bbox": [5, 6, 10, 4], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [20, 10, 5, 5]},
            {"id": 3, "image_id": 9, "category_id": 3, "bbox": [1, 1, 30, 30], "iscrowd": 1},
        ],
    }
    (root / "ann.json").write_text(json.dumps(data))
    return root


def test_coco_reader(coco_root: Path) -> None:
    reader = CocoReader(coco_root, "ann.json", image_dir="imgs")
    assert reader.class_names == ("dent", "scratch") and reader.has_templates
    a, b = reader[0], reader[1]
    np.testing.assert_array_equal(a.boxes, [[5, 6, 15, 10], [20, 10, 25, 15]])
    np.testing.assert_array_equal(a.labels, [2, 1])
    assert a.template is not None and not a.is_normal and a.image_id == "7"
    assert b.is_normal and len(b.boxes) == 0  # only a crowd annotation: ignored


def test_coco_unknown_category_and_missing_template(coco_root: Path) -> None:
    data = json.loads((coco_root / "ann.json").read_text())
    data["annotations"].append({"id": 4, "image_id": 9, "category_id": 99, "bbox": [1, 1, 3, 3]})
    (coco_root / "ann.json").write_text(json.dumps(data))
    (coco_root / "imgs" / "ta.png").unlink()
    reader = CocoReader(coco_root, "ann.json", image_dir="imgs")
    assert len(reader) == 0
    assert reader.issues.counts == {"unknown_class": 1, "missing_template": 1}


def test_coco_config_reports_templates(coco_root: Path) -> None:
    cfg = DataConfig(format="coco", root=coco_root, annotation_file="ann.json", image_dir="imgs")
    assert cfg.has_templates()
    with pytest.raises(FileNotFoundError, match="nope.json"):
        CocoReader(coco_root, "nope.json")
