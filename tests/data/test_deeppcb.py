"""DeepPCB-format reader: list parsing (missing final newline), annotations, normal pairs, group split, policies."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from training.data.deeppcb import DEEPPCB_CLASSES, DeepPCBReader, group_of, read_list_file, split_by_group
from training.data.issues import BadDataError, DataIssueLog

# shared/ lies beside the repository (here and in CI's clone); RDDN_DEEPPCB_ROOT points elsewhere
REAL_DEEPPCB = Path(os.environ.get("RDDN_DEEPPCB_ROOT")
                    or Path(__file__).resolve().parents[3] / "shared" / "datasets" / "deeppcb")


def test_list_without_final_newline_is_read_completely(deeppcb_root: Path) -> None:
    text = (deeppcb_root / "trainval.txt").read_text()
    assert not text.endswith("\n")
    lines = read_list_file(deeppcb_root / "trainval.txt")
    assert len(lines) == 3
    assert lines[-1].endswith("20085_not/20085000.txt")


def test_reader_parses_boxes_labels_templates_and_normals(deeppcb_root: Path) -> None:
    reader = DeepPCBReader(deeppcb_root)
    assert reader.class_names == DEEPPCB_CLASSES
    assert reader.has_templates and len(reader) == 3
    first = reader[0]
    assert first.image_id == "00041000"
    np.testing.assert_array_equal(first.boxes, [[10, 20, 30, 40], [50, 40, 70, 60]])
    np.testing.assert_array_equal(first.labels, [1, 6])
    assert first.boxes.dtype == np.float32 and first.labels.dtype == np.int64
    assert first.image.shape == (64, 96, 3) and first.template is not None
    # BGR -> RGB conversion keeps grey grey; the template is a different file from the image
    assert abs(int(first.image[0, 0, 0]) - 200) <= 2 and abs(int(first.template[0, 0, 0]) - 190) <= 2
    assert not first.is_normal
    normal = reader[1]
    assert normal.is_normal and normal.boxes.shape == (0, 4) and normal.labels.shape == (0,)
    assert reader.issues.issues == []


def test_split_by_group_is_deterministic_and_complete(deeppcb_root: Path) -> None:
    lines = read_list_file(deeppcb_root / "trainval.txt")
    train, val = split_by_group(lines, ["group20085"])
    assert [group_of(x) for x in val] == ["group20085"]
    assert sorted(train + val) == sorted(lines)
    assert split_by_group(lines, [20085]) == (train, val) == split_by_group(lines, ["20085"])
    with pytest.raises(ValueError, match="group99999"):
        split_by_group(lines, ["group99999"])


def test_malformed_annotation_line_skip_and_fail(deeppcb_root: Path) -> None:
    ann = deeppcb_root / "group20085" / "20085_not" / "20085000.txt"
    ann.write_text("5 5 25 25 3\n5 5 x 25 3\n")
    skipping = DeepPCBReader(deeppcb_root, bad_data="skip")
    assert len(skipping) == 2
    assert skipping.issues.counts == {"malformed_annotation": 1}
    assert "20085000.txt" in skipping.issues.issues[0].path
    with pytest.raises(BadDataError, match="20085000.txt"):
        DeepPCBReader(deeppcb_root, bad_data="fail")


def test_malformed_list_line_and_missing_files_are_reported(deeppcb_root: Path) -> None:
    lst = deeppcb_root / "trainval.txt"
    lst.write_text(lst.read_text() + "\nonly_one_field.jpg\ngroup1/1/1.jpg group1/1_not/1.txt")
    log = DataIssueLog("skip")
    reader = DeepPCBReader(deeppcb_root, issues=log)
    assert len(reader) == 3
    assert log.counts == {"malformed_annotation": 1, "missing_image": 1}


def test_classes_file_overrides_class_names(deeppcb_root: Path) -> None:
    (deeppcb_root / "classes.txt").write_text("a\nb\nc\nd\ne\nf\n")
    assert DeepPCBReader(deeppcb_root).class_names == ("a", "b", "c", "d", "e", "f")


def test_label_outside_classes_is_unknown_class(deeppcb_root: Path) -> None:
    (deeppcb_root / "group20085" / "20085_not" / "20085000.txt").write_text("5 5 25 25 7\n")
    reader = DeepPCBReader(deeppcb_root)
    assert len(reader) == 2 and reader.issues.counts == {"unknown_class": 1}


@pytest.mark.skipif(not REAL_DEEPPCB.is_dir(), reason="the shared DeepPCB copy is not on this machine")
def test_real_deeppcb_trainval_reads_cleanly() -> None:
    reader = DeepPCBReader(REAL_DEEPPCB)
    assert len(reader) == 1000 and reader.issues.issues == []
    sample = reader[0]
    assert sample.image.shape == (640, 640, 3) and sample.template.shape == (640, 640, 3)
    assert len(sample.boxes) > 0 and sample.labels.min() >= 1 and sample.labels.max() <= 6
