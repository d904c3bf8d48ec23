"""Bad-data policies end to end: unreadable image, boxes outside the image, unknown class, missing template."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.data.base import SkippedSampleError
from training.data.dataset import DataConfig, build_dataset
from training.data.deeppcb import DeepPCBReader
from training.data.issues import BadDataError, DataIssueLog


def _ann(root: Path, group: str, stem: str) -> Path:
    return root / f"group{group}" / f"{group}_not" / f"{stem}.txt"


def test_unreadable_image_skip_replaces_sample_and_fail_names_file(deeppcb_root: Path) -> None:
    broken = deeppcb_root / "group00041" / "00041" / "00041001_test.jpg"
    broken.write_bytes(b"not a jpeg")
    cfg = DataConfig(format="deeppcb", root=deeppcb_root, test_short_size=64, bad_data="skip")
    ds = build_dataset(cfg, train=False)
    assert len(ds) == 3
    items = [ds[i] for i in range(len(ds))]  # the epoch continues
    assert items[1].image_id == "20085000"  # replaced by the next loadable sample
    assert ds.issues.counts == {"unreadable_image": 1}
    assert str(broken) in ds.issues.issues[0].path
    with pytest.raises(SkippedSampleError):
        ds.reader[1]
    failing = build_dataset(cfg.model_copy(update={"bad_data": "fail"}), train=False)
    failing[0]
    with pytest.raises(BadDataError, match="00041001_test.jpg"):
        failing[1]


def test_boxes_partly_outside_are_clipped_wholly_outside_dropped(deeppcb_root: Path) -> None:
    _ann(deeppcb_root, "20085", "20085000").write_text("80 50 120 70 1\n200 10 220 20 2\n10 10 20 20 3\n")
    reader = DeepPCBReader(deeppcb_root)
    s = reader[2]  # image is 96 x 64
    np.testing.assert_array_equal(s.boxes, [[80, 50, 96, 64], [10, 10, 20, 20]])
    np.testing.assert_array_equal(s.labels, [1, 3])
    assert reader.issues.counts == {"box_clipped": 1, "box_dropped": 1}
    reader[2]
    assert reader.issues.counts == {"box_clipped": 1, "box_dropped": 1}, "re-reading must not double count"
    with pytest.raises(BadDataError, match="outside"):
        DeepPCBReader(deeppcb_root, bad_data="fail")[2]
    clip_only = DataIssueLog("fail")
    _ann(deeppcb_root, "20085", "20085000").write_text("80 50 120 70 1\n")
    DeepPCBReader(deeppcb_root, issues=clip_only)[2]  # clipping is a repair, never fatal
    assert clip_only.counts == {"box_clipped": 1}


def test_degenerate_box_dropped_at_construction(deeppcb_root: Path) -> None:
    _ann(deeppcb_root, "20085", "20085000").write_text("30 30 30 40 1\n40 40 30 50 2\n5 5 9 9 4\n")
    reader = DeepPCBReader(deeppcb_root)
    assert reader.issues.counts == {"box_dropped": 2}
    np.testing.assert_array_equal(reader.records[2].boxes, [[5, 5, 9, 9]])


def test_unknown_class_skips_sample(deeppcb_root: Path) -> None:
    _ann(deeppcb_root, "00041", "00041000").write_text("1 1 5 5 9\n")
    reader = DeepPCBReader(deeppcb_root)
    assert reader.image_ids == ["00041001", "20085000"]
    with pytest.raises(BadDataError, match=r"00041000\.txt.*not in 1\.\.6"):
        DeepPCBReader(deeppcb_root, bad_data="fail")


def test_missing_template_skip_and_fail(deeppcb_root: Path) -> None:
    (deeppcb_root / "group20085" / "20085" / "20085000_temp.jpg").unlink()
    assert DeepPCBReader(deeppcb_root).issues.counts == {"missing_template": 1}
    with pytest.raises(BadDataError, match="20085000_temp.jpg"):
        DeepPCBReader(deeppcb_root, bad_data="fail")


def test_template_of_wrong_size_is_reported(deeppcb_root: Path, write_image) -> None:
    write_image(deeppcb_root / "group20085" / "20085" / "20085000_temp.jpg", np.zeros((10, 10, 3), np.uint8))
    reader = DeepPCBReader(deeppcb_root)
    with pytest.raises(SkippedSampleError):
        reader[2]
    assert reader.issues.counts == {"template_mismatch": 1}


def test_every_sample_bad_is_a_clear_error(deeppcb_root: Path) -> None:
    for p in (deeppcb_root).rglob("*_test.jpg"):
        p.write_bytes(b"")
    ds = build_dataset(DataConfig(format="deeppcb", root=deeppcb_root), train=False)
    with pytest.raises(RuntimeError, match="no loadable sample.*unreadable_image=3"):
        ds[0]


def test_config_errors_name_keys(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="data.root"):
        DataConfig(format="deeppcb")
    with pytest.raises(ValueError, match="annotation_file"):
        DataConfig(format="coco", root=tmp_path)
    with pytest.raises(ValueError, match="val_groups"):
        DataConfig(format="coco", root=tmp_path, annotation_file="a.json", val_groups=("group1",))
    with pytest.raises(ValueError):
        DataConfig(format="deeppcb", root=tmp_path, shuffle=True)  # unknown key
    with pytest.raises(FileNotFoundError, match="trainval.txt"):
        build_dataset(DataConfig(format="deeppcb", root=tmp_path), train=True)
