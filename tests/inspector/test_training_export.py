"""``inspector export-training``: daemon results + reviews -> DeepPCB/COCO pairs -> read back -> rddn train/eval."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from sqlalchemy import select

from inspector.align import align_template
from inspector.cli import main
from inspector.config import load_station_config
from inspector.db import Frame
from inspector.review import record_review, review_states
from inspector.templates import read_image_rgb
from training.data.coco import CocoReader
from training.data.deeppcb import DeepPCBReader
from training.data.synthetic import SYNTHETIC_CLASSES

REPO = Path(__file__).resolve().parents[2]
CLASSES = list(SYNTHETIC_CLASSES)  # spot, scratch, hole, open, short: the demo model's


@pytest.fixture
def reviewed_station(write_config, start_daemon, frames, wait):
    """A daemon inspects 9 frames on 2 positions; reviewers decide about 6 of them, one only in part."""
    path = write_config(detector={"backend": "difference", "options": {"class_names": CLASSES}})
    daemon = start_daemon(load_station_config(path))
    drop = daemon.cfg.cameras[0].drop_folder
    plan = [("P00", True), ("P00", True), ("P01", True), ("P00", False), ("P01", False), ("P00", True),
            ("P01", True), ("P00", False), ("P01", True)]
    for i, (position, defective) in enumerate(plan):
        frames.drop(drop, f"{position}_s{i}.jpg", int(position[-1]), defective)
    wait(lambda: daemon.wait_idle(0.05) and len(rows(daemon)) == len(plan), timeout=20)
    f = {r.name.split("_s")[1].split(".")[0]: r for r in rows(daemon)}
    f = [f[str(i)] for i in range(len(plan))]
    assert [r.status for r in f] == ["defective" if d else "ok" for _, d in plan]
    with daemon.factory.begin() as db:
        record_review(db, f[0].id, "confirm", "ann")  # true defects, as detected ("spot")
        first = f[1].detections[0].id
        record_review(db, f[1].id, "confirm", "ann")
        record_review(db, f[1].id, "wrong_class", "bob", detection_id=first, class_name="scratch")
        record_review(db, f[2].id, "false_call", "ann")  # a false call: a normal pair
        record_review(db, f[3].id, "missed", "ann", class_name="hole", box=(30.5, 40, 52, 61.25))  # missed defect
        record_review(db, f[4].id, "confirm", "ann")  # inspected OK, confirmed clean: a normal pair
        record_review(db, f[6].id, "confirm", "ann")
        record_review(db, f[6].id, "missed", "bob", class_name="open", box=(5, 5, 15, 20))
        record_review(db, f[5].id, "missed", "bob", class_name="short", box=(60, 60, 70, 70))  # detections open
        # f[8]: detections nobody reviewed; f[7]: OK, never reviewed
    return path, daemon, f


def rows(daemon) -> list[Frame]:
    with daemon.factory() as db:
        return list(db.scalars(select(Frame).order_by(Frame.id)))


def truth_of(daemon, frame_ids) -> dict[str, tuple[list[list[float]], list[int]]]:
    """Expected annotations per exported id: the reviewed truth, classes through the model's class_names."""
    with daemon.factory() as db:
        frames_ = list(db.scalars(select(Frame).where(Frame.id.in_(frame_ids))))
        states = review_states(db, frames_)
    out = {}
    for fid, state in states.items():
        boxes = [[round(v, 2) for v in t.box] for t in state.truth]
        out[f"{fid:08d}"] = (boxes, [CLASSES.index(t.class_name) + 1 for t in state.truth])
    return out


def by_id(reader) -> dict[str, tuple[list[list[float]], list[int]]]:
    return {r.image_id: ([[round(float(v), 2) for v in b] for b in r.boxes], r.labels.tolist()) for r in reader.records}


def test_export_writes_reviewed_truth_as_pairs_both_readers_read_back(reviewed_station, tmp_path, capsys):
    path, daemon, f = reviewed_station
    out = tmp_path / "export"
    assert main(["export-training", "--config", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "6 reviewed pairs (4 with defects, 2 normal" in printed and "not exported: 2 frame(s)" in printed

    exported = [f[i].id for i in (0, 1, 2, 3, 4, 6)]
    expected = truth_of(daemon, exported)
    assert expected[f"{f[2].id:08d}"] == ([], []) and expected[f"{f[4].id:08d}"] == ([], [])  # the negatives
    assert expected[f"{f[3].id:08d}"] == ([[30.5, 40.0, 52.0, 61.25]], [CLASSES.index("hole") + 1])
    assert CLASSES.index("scratch") + 1 in expected[f"{f[1].id:08d}"][1]

    deeppcb = DeepPCBReader(out)
    assert deeppcb.class_names == tuple(CLASSES) and len(deeppcb.issues.counts) == 0
    assert by_id(deeppcb) == expected
    assert {r.image_id for r in deeppcb.records if r.is_normal} == {f"{f[2].id:08d}", f"{f[4].id:08d}"}
    coco = CocoReader(out, "coco.json")
    assert coco.class_names == tuple(CLASSES) and coco.has_templates
    coco_ids = {img["id"]: f"{img['frame_id']:08d}" for img in json.loads((out / "coco.json").read_text())["images"]}
    assert {coco_ids[int(k)]: v for k, v in by_id(coco).items()} == expected

    # the pair is what the daemon saw: the decoded frame and the template version moved by the recorded shift
    with daemon.factory() as db:
        frame = db.get(Frame, f[1].id)
    image = read_image_rgb(Path(frame.stored_path))
    group = "group00001/00001"  # P00 came first
    assert np.array_equal(read_image_rgb(out / group / f"{frame.id:08d}_test.png"), image)
    seen = align_template(image, frames_template(daemon, frame), daemon.cfg.alignment.method,
                          daemon.cfg.alignment.max_shift, daemon.cfg.alignment.downscale)
    assert np.array_equal(read_image_rgb(out / group / f"{frame.id:08d}_temp.png"), seen.template)

    manifest = json.loads((out / "export.json").read_text())
    assert manifest["pairs"] == 6 and manifest["normal_pairs"] == 2 and manifest["not_exported"]["unreviewed"] == 1
    assert manifest["not_exported"]["partial"] == 1
    assert manifest["boxes"]["missed"] == 2 and manifest["boxes"]["reclassified"] == 1
    assert manifest["groups"] == {"group00001": {"camera": "cam1", "position": "P00"},
                                  "group00002": {"camera": "cam1", "position": "P01"}}
    assert main(["export-training", "--config", str(path), "--out", str(out)]) == 2  # never merged into an old one
    assert "not empty" in capsys.readouterr().err
    assert main(["export-training", "--config", str(path), "--out", str(tmp_path / "x"), "--camera", "camX"]) == 2
    assert "no camera(s) ['camX']" in capsys.readouterr().err and not (tmp_path / "x").exists()

    Path(f[0].stored_path).unlink()  # retention purged one reviewed frame's image
    assert main(["export-training", "--config", str(path), "--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "export.json").read_text())
    assert again["pairs"] == 5 and again["skipped"] == {"image file no longer stored (retention)": [f[0].id]}
    assert again["groups"] == manifest["groups"]
    assert not list(tmp_path.glob(".again.partial-*"))


def frames_template(daemon, frame: Frame) -> np.ndarray:
    from inspector.db.models import Template

    with daemon.factory() as db:
        return read_image_rgb(Path(db.get(Template, frame.template_id).path))


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed (daemon base install)")
def test_rddn_trains_on_the_export_combined_with_a_dataset_and_evaluates_on_it(reviewed_station, tmp_path):
    from training.cli import main as rddn
    from training.data.synthetic import SyntheticSpec, write_deeppcb_layout

    path, daemon, f = reviewed_station
    out = tmp_path / "export"
    assert main(["export-training", "--config", str(path), "--out", str(out)]) == 0
    existing = tmp_path / "existing"  # the dataset the station's model was trained on
    write_deeppcb_layout(existing, 4, SyntheticSpec(height=128, width=128, defect_size=(8, 24)))
    sizes = {"train_short_size": [128, 128], "train_max_size": 128, "test_short_size": 128, "test_max_size": 128}
    config = tmp_path / "retrain.yaml"
    config.write_text(yaml.safe_dump({
        "base": str(REPO / "training/configs/synthetic_tiny.yaml"),
        "output_dir": str(tmp_path / "run"),
        "data": {"train": {"format": "deeppcb", "root": str(out), **sizes},
                 "extra": [{"format": "deeppcb", "root": str(existing)}]},
        "batch_size": 2, "threads": 1, "max_iters": 2, "time_budget_minutes": None, "progress_bar": False,
    }))
    assert rddn(["train", "--config", str(config)]) == 0
    run_config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert run_config["data"]["extra"][0]["root"] == str(existing)
    assert rddn(["eval", "--checkpoint", str(tmp_path / "run" / "last.pt"), "--data", str(out),
                 "--out", str(tmp_path / "eval")]) == 0
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["images"] == 6 and set(report["per_class"]) == set(CLASSES)
