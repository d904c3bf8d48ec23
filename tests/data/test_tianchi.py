"""Tianchi Fabric (JSON list + template_ per folder) and Aluminum (LabelMe JSON, normal folder) readers."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from training.data.issues import BadDataError
from training.data.tianchi import (
    ALUMINUM_CLASSES,
    FABRIC_CLASSES,
    TianchiAluminumReader,
    TianchiFabricReader,
)


def _img(h: int = 48, w: int = 64, value: int = 120) -> np.ndarray:
    return np.full((h, w, 3), value, np.uint8)


@pytest.fixture
def fabric_root(tmp_path: Path, write_image) -> Path:
    root = tmp_path / "fabric"
    for stem in ("aaa", "bbb"):
        write_image(root / "defect" / stem / f"{stem}.jpg", _img())
        write_image(root / "defect" / stem / f"template_{stem}.jpg", _img(value=110))
    write_image(root / "normal" / "ccc" / "ccc.jpg", _img())
    write_image(root / "normal" / "ccc" / "template_ccc.jpg", _img(value=110))
    anns = [
        {"name": "aaa.jpg", "defect_name": "破洞", "bbox": [1, 2, 11, 12]},  # Chinese name -> broken hole
        {"name": "aaa.jpg", "defect_name": "water mark", "bbox": [20, 5, 40, 30]},  # English name
        {"name": "bbb.jpg", "defect_name": "13", "bbox": [3, 3, 9, 9]},  # challenge code -> color shade
    ]
    (root / "anno_train.json").write_text(json.dumps(anns, ensure_ascii=False), encoding="utf-8")
    return root


def test_fabric_reads_boxes_names_codes_and_normals(fabric_root: Path, write_image) -> None:
    # an unannotated image outside the normal folder could be an unlabelled defect: left out
    write_image(fabric_root / "defect" / "ddd" / "ddd.jpg", _img())
    write_image(fabric_root / "defect" / "ddd" / "template_ddd.jpg", _img())
    reader = TianchiFabricReader(fabric_root)
    assert len(FABRIC_CLASSES) == 15 and reader.class_names == FABRIC_CLASSES and reader.has_templates
    by_id = {reader.records[i].image_id: reader[i] for i in range(len(reader))}
    assert set(by_id) == {"aaa", "bbb", "ccc"}
    a = by_id["aaa"]
    np.testing.assert_array_equal(a.boxes, [[1, 2, 11, 12], [20, 5, 40, 30]])
    assert [FABRIC_CLASSES[i - 1] for i in a.labels] == ["broken hole", "water mark"]
    assert FABRIC_CLASSES[by_id["bbb"].labels[0] - 1] == "color shade"
    assert a.template is not None and a.template.shape == a.image.shape
    assert by_id["ccc"].is_normal and len(by_id["ccc"].boxes) == 0 and not a.is_normal
    assert reader.issues.issues == []


def test_fabric_unknown_defect_name_and_missing_template(fabric_root: Path) -> None:
    anns = json.loads((fabric_root / "anno_train.json").read_text(encoding="utf-8"))
    anns.append({"name": "bbb.jpg", "defect_name": "dragon", "bbox": [1, 1, 5, 5]})
    (fabric_root / "anno_train.json").write_text(json.dumps(anns, ensure_ascii=False), encoding="utf-8")
    (fabric_root / "defect" / "aaa" / "template_aaa.jpg").unlink()
    reader = TianchiFabricReader(fabric_root)
    assert [r.image_id for r in reader.records] == ["ccc"]
    assert reader.issues.counts == {"unknown_class": 1, "missing_template": 1}
    with pytest.raises(BadDataError, match="dragon"):
        TianchiFabricReader(fabric_root, bad_data="fail")


def test_fabric_holdout_split_is_disjoint_and_deterministic(fabric_root: Path) -> None:
    train = TianchiFabricReader(fabric_root, split="train", val_fraction=0.5, split_seed=3).image_ids
    val = TianchiFabricReader(fabric_root, split="val", val_fraction=0.5, split_seed=3).image_ids
    assert sorted(train + val) == ["aaa", "bbb", "ccc"] and not set(train) & set(val)
    assert TianchiFabricReader(fabric_root, split="val", val_fraction=0.5, split_seed=3).image_ids == val


def _labelme(shapes: list[dict]) -> str:
    return json.dumps({"version": "3.6.16", "shapes": shapes, "imagePath": "x.jpg"}, ensure_ascii=False)


@pytest.fixture
def aluminum_root(tmp_path: Path, write_image) -> Path:
    root = tmp_path / "aluminum"
    write_image(root / "单瑕疵图片" / "脏点" / "d1.jpg", _img())
    (root / "单瑕疵图片" / "脏点" / "d1.json").write_text(
        _labelme([{"label": "脏点", "points": [[10, 12], [20, 8], [15, 30]], "shape_type": "polygon"}]), encoding="utf-8"
    )
    write_image(root / "多瑕疵图片" / "m1.jpg", _img())
    (root / "多瑕疵图片" / "m1.json").write_text(
        _labelme([
            {"label": "擦花", "points": [[1, 1], [9, 9]], "shape_type": "rectangle"},
            {"label": "pit", "points": [[30, 20], [40, 25]], "shape_type": "rectangle"},
        ]),
        encoding="utf-8",
    )
    write_image(root / "无瑕疵样本" / "n1.jpg", _img())
    write_image(root / "无瑕疵样本" / "n2.jpg", _img())
    return root


def test_aluminum_reads_labelme_and_normals(aluminum_root: Path) -> None:
    reader = TianchiAluminumReader(aluminum_root)
    assert len(ALUMINUM_CLASSES) == 10 and not reader.has_templates
    by_id = {reader.records[i].image_id: reader[i] for i in range(len(reader))}
    assert set(by_id) == {"d1", "m1", "n1", "n2"}
    d1 = by_id["d1"]
    np.testing.assert_array_equal(d1.boxes, [[10, 8, 20, 30]])  # bounding box of the polygon
    assert ALUMINUM_CLASSES[d1.labels[0] - 1] == "dirty spot" and d1.template is None
    m1 = by_id["m1"]
    assert [ALUMINUM_CLASSES[i - 1] for i in m1.labels] == ["abrasion mark", "pit"]
    assert by_id["n1"].is_normal and by_id["n2"].is_normal and not m1.is_normal


def test_aluminum_bad_json_and_unknown_label(aluminum_root: Path) -> None:
    (aluminum_root / "多瑕疵图片" / "m1.json").write_text("{not json", encoding="utf-8")
    (aluminum_root / "单瑕疵图片" / "脏点" / "d1.json").write_text(_labelme([{"label": "其他", "points": [[1, 1], [5, 5]]}]), encoding="utf-8")
    reader = TianchiAluminumReader(aluminum_root)
    assert sorted(reader.image_ids) == ["n1", "n2"]
    assert reader.issues.counts == {"malformed_annotation": 1, "unknown_class": 1}
    with pytest.raises(BadDataError, match=r"(d1|m1)\.json"):
        TianchiAluminumReader(aluminum_root, bad_data="fail")
