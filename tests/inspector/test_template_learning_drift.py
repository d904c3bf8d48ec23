"""Template learning (median of aligned OK frames), hot pick-up of new versions, alignment residual and drift."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from inspector.align import align_template, alignment_residual
from inspector.config import load_station_config
from inspector.db import Frame
from inspector.db.models import Template
from inspector.demo.frames import demo_spec, encode_jpeg, make_frame, position_templates
from inspector.drift import DriftConfig
from inspector.metrics import sample_value
from inspector.review import record_review
from inspector.template_learning import median_of_aligned, use_frame_as_template
from inspector.templates import TemplateError, read_image_rgb

REPO = Path(__file__).resolve().parents[2]


def texture(h: int = 96, w: int = 112, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8)
    import cv2

    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


def shifted(image: np.ndarray, dx: int, dy: int, fill: int) -> np.ndarray:
    """frame(x, y) = image(x - dx, y - dy); pixels from outside the image are ``fill`` (junk a camera sees)."""
    out = np.full_like(image, fill)
    h, w = image.shape[:2]
    out[max(0, dy):h + min(0, dy), max(0, dx):w + min(0, dx)] = image[max(0, -dy):h - max(0, dy),
                                                                      max(0, -dx):w - max(0, dx)]
    return out


def test_median_of_aligned_frames_recovers_the_template_without_defects_or_border_junk():
    template = texture()
    moves = [(3, 0), (-2, 1), (0, -4), (1, 2), (-3, -1)]
    frames = [shifted(template, dx, dy, fill=255) for dx, dy in moves]
    frames[1][40:52, 30:44] = 0  # a defect on one board: outvoted
    frames[3][10:20, 60:70] = 255
    learned = median_of_aligned(frames, [(float(dx), float(dy)) for dx, dy in moves], fallback=template)
    assert learned.shape == template.shape and learned.dtype == np.uint8
    # integer shifts: every pixel is exact, the borders too (uncovered junk does not vote, covered frames do)
    assert np.array_equal(learned, template)


def test_median_falls_back_to_the_current_template_where_no_frame_has_data():
    template = texture()
    frames = [shifted(template, 4, 0, fill=7) for _ in range(3)]  # all moved right: column 107.. never seen
    learned = median_of_aligned(frames, [(4.0, 0.0)] * 3, fallback=np.full_like(template, 99))
    assert (learned[:, -4:] == 99).all() and np.array_equal(learned[:, :-4], template[:, :-4])


def test_alignment_residual_leaves_out_detections_and_the_uncovered_band():
    import cv2

    template = position_templates(demo_spec(128, positions=1))["P00"]
    frame = np.clip(shifted(template, 12, -9, fill=0).astype(np.int16) - 6, 0, 255).astype(np.uint8)  # dimmer
    result = align_template(frame, template, "phase", downscale=1)
    assert result.shift == pytest.approx((12, -9), abs=0.1)
    gray = lambda img: cv2.cvtColor(img, cv2.COLOR_RGB2GRAY).astype(np.float64)  # noqa: E731
    truth = np.abs(gray(frame) - gray(shifted(template, 12, -9, fill=0)))[:-9, 12:]  # where the template has data
    clean = alignment_residual(result)
    assert clean == pytest.approx(truth.mean(), abs=0.2) and clean > 2
    frame[60:72, 60:72] = 255  # a defect the detector reported
    defect = align_template(frame, template, "phase", downscale=1)
    assert alignment_residual(defect) > clean + 1.5
    assert alignment_residual(defect, boxes=[(60, 60, 72, 72)]) == pytest.approx(clean, abs=0.2)
    assert np.isnan(alignment_residual(defect, boxes=[(0, 0, 128, 128)]))


@pytest.mark.parametrize("baseline, baseline_n, recent, recent_n, cfg, drifted", [
    (2.0, 20, 2.5, 20, {}, False),
    (2.0, 20, 4.1, 20, {}, True),  # ratio 2.05 > 1.5 and +2.1 >= 2
    (0.5, 20, 1.5, 20, {}, False),  # ratio 3 but only +1 grey level
    (2.0, 20, 4.1, 19, {}, False),  # too few recent frames for a verdict
    (2.0, 19, 4.1, 20, {}, False),  # baseline not established
    (2.0, 20, 2.5, 20, {"max_residual": 2.4}, True),  # absolute limit
    (2.0, 20, 4.1, 20, {"max_ratio": None}, False),
])
def test_drift_rule(baseline, baseline_n, recent, recent_n, cfg, drifted):
    assert DriftConfig(window=30, min_frames=20, **cfg).assess(baseline, baseline_n, recent, recent_n) is drifted


def test_drift_config_rejects_min_frames_above_window():
    with pytest.raises(ValueError, match="must not exceed window"):
        DriftConfig(window=5, min_frames=6)


# -- the daemon ------------------------------------------------------------------------------------------------
def drop_frame(frames, folder: Path, name: str, position: int = 0, defective: bool = False,
               brightness: int = 0) -> None:
    """Like ``frames.drop`` but with a lighting change of ``brightness`` grey levels (template drift)."""
    while True:
        sample = make_frame(frames.spec, position, frames.rng, defective)
        if not defective or (sample.boxes.min() >= 12 and sample.boxes[:, 2:].max() <= frames.spec.width - 12):
            break
    image = np.clip(sample.image.astype(np.int16) + brightness, 0, 255).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp"
    tmp.write_bytes(encode_jpeg(image))
    os.rename(tmp, folder / name)


def frame_rows(daemon) -> list[Frame]:
    with daemon.factory() as db:
        return list(db.scalars(select(Frame).order_by(Frame.id)))


def test_learned_version_from_ok_frames_is_picked_up_without_restart(write_config, start_daemon, frames, wait):
    path = write_config(templates={"recheck_s": 0.2})
    daemon = start_daemon(load_station_config(path))
    drop = daemon.cfg.cameras[0].drop_folder
    plan = [False, True, False, False, True, False, False, False, False]  # defective?
    for i, defective in enumerate(plan):
        drop_frame(frames, drop, f"P00_a{i}.jpg", 0, defective)
        wait(lambda: daemon.wait_idle(0.05) and len(frame_rows(daemon)) == i + 1)
    drop_frame(frames, drop, "P01_other.jpg", 1)  # another position: never a candidate
    wait(lambda: len(frame_rows(daemon)) == len(plan) + 1 and daemon.wait_idle(0.05))
    rows = frame_rows(daemon)
    assert [r.status for r in rows[:len(plan)]] == ["defective" if d else "ok" for d in plan]
    assert all(r.align_residual is not None and 0 < r.align_residual < 10 for r in rows)
    # the stored residual is the daemon's alignment of the stored image, its detections left out
    gaps = []
    for r in rows[:len(plan)]:
        result = align_template(read_image_rgb(Path(r.stored_path)), frames.templates["P00"])
        boxes = [(d.x1, d.y1, d.x2, d.y2) for d in r.detections]
        assert r.align_residual == pytest.approx(alignment_residual(result, boxes), abs=1e-6)
        gaps.append(alignment_residual(result) - r.align_residual)
    assert max(gaps) > 0.3  # (a defect inside the measure would have raised it)
    v1 = rows[0].template_id
    # reviews: frame 4's detections were false calls (a good board after all); on frame 7, OK for the
    # detector, a reviewer drew a missed defect (not a good board)
    with daemon.factory.begin() as db:
        record_review(db, rows[4].id, "false_call", "alice")
        record_review(db, rows[7].id, "missed", "alice", class_name="defect", box=(20, 20, 40, 40))
    judged_ok = [r.id for i, r in enumerate(rows[:len(plan)]) if (r.status == "ok" and i != 7) or i == 4]
    ok_newest_first = judged_ok[::-1]

    # a separate process, as a quality engineer would run it while the daemon keeps inspecting
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "inspector.cli", "templates", "learn", "--config", str(path),
                           "--camera", "cam1", "--position", "P00", "--frames", "5"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "median of 5 OK frames" in done.stdout
    with daemon.factory() as db:
        v2 = db.scalar(select(Template).where(Template.position == "P00", Template.active.is_(True)))
    assert v2.version == 2 and v2.provenance["method"] == "median"
    assert v2.provenance["frames"] == ok_newest_first[:5]  # the most recent frames judged OK, by detector or people
    assert rows[4].id in v2.provenance["frames"] and rows[7].id not in v2.provenance["frames"]
    assert v2.provenance["aligned_to"] == {"template_id": v1, "version": 1}
    learned = read_image_rgb(Path(v2.path)).astype(np.int16)
    assert np.abs(learned - frames.templates["P00"]).mean() < 3.0  # the same board, JPEG and interpolation aside

    # the running daemon inspects against v2 within templates.recheck_s, no restart, no SIGHUP
    def latest_uses_v2() -> bool:
        drop_frame(frames, drop, f"P00_b{len(frame_rows(daemon))}.jpg", 0)
        wait(lambda: daemon.wait_idle(0.05))
        return frame_rows(daemon)[-1].template_id == v2.id
    wait(latest_uses_v2, timeout=10, interval=0.25)
    assert sample_value(daemon.metrics, "rddn_template_version", {"camera": "cam1", "position": "P00"}) == 2


def test_use_frame_as_template_refuses_defective_frames(write_config, start_daemon, frames, wait):
    daemon = start_daemon(load_station_config(write_config()))
    drop = daemon.cfg.cameras[0].drop_folder
    drop_frame(frames, drop, "P00_good.jpg", 0)
    drop_frame(frames, drop, "P00_bad.jpg", 0, defective=True)
    wait(lambda: len(frame_rows(daemon)) == 2 and daemon.wait_idle(0.05))
    good, bad = sorted(frame_rows(daemon), key=lambda r: r.status != "ok")
    assert (good.status, bad.status) == ("ok", "defective")
    with pytest.raises(TemplateError, match="not all reviewed as false calls"):
        use_frame_as_template(daemon.templates, bad.id, by="alice")
    with pytest.raises(TemplateError, match="no frame"):
        use_frame_as_template(daemon.templates, 10_000, by="alice")
    with daemon.factory.begin() as db:
        record_review(db, good.id, "missed", "bob", class_name="defect", box=(30, 30, 50, 50))
    with pytest.raises(TemplateError, match="drew a missed defect"):  # a reviewer saw what the detector missed
        use_frame_as_template(daemon.templates, good.id, by="alice")
    with daemon.factory.begin() as db:
        record_review(db, bad.id, "false_call", "bob")
    row = use_frame_as_template(daemon.templates, bad.id, by="alice")
    assert (row.version, row.source) == (2, f"frame:{bad.id}")
    assert row.provenance == {"method": "frame", "frames": [bad.id], "by": "alice"}


def test_drift_is_flagged_in_metrics_and_database_and_a_new_version_clears_it(write_config, start_daemon, frames,
                                                                              wait):
    drift = {"window": 6, "min_frames": 4, "max_ratio": 1.5, "min_increase": 2.0, "persist_s": 0.2}
    path = write_config(templates={"recheck_s": 0.1, "drift": drift})
    daemon = start_daemon(load_station_config(path))
    drop = daemon.cfg.cameras[0].drop_folder
    labels = {"camera": "cam1", "position": "P00"}

    def feed(count: int, brightness: int, tag: str) -> None:
        start = len(frame_rows(daemon))
        for i in range(count):
            drop_frame(frames, drop, f"P00_{tag}{i}.jpg", 0, brightness=brightness)
        wait(lambda: len(frame_rows(daemon)) == start + count and daemon.wait_idle(0.05))

    def template_row(version: int) -> Template:
        with daemon.factory() as db:
            return db.scalar(select(Template).where(Template.position == "P00", Template.version == version))

    feed(6, 0, "base")
    baseline = sample_value(daemon.metrics, "rddn_template_residual_baseline", labels)
    assert 0 < baseline < 5
    assert sample_value(daemon.metrics, "rddn_template_drifted", labels) == 0
    feed(5, 18, "lamp")  # the lamp ages: every frame 18 grey levels brighter, below the detector's threshold
    rows = frame_rows(daemon)
    assert [r.status for r in rows[-5:]] == ["ok"] * 5
    assert min(r.align_residual for r in rows[-5:]) > baseline + 10
    assert sample_value(daemon.metrics, "rddn_template_drifted", labels) == 1
    assert sample_value(daemon.metrics, "rddn_template_residual", labels) > 1.5 * baseline
    # what the review page shows, written by the supervisor within persist_s
    wait(lambda: template_row(1).drifted and template_row(1).residual_frames == 11)
    assert template_row(1).residual_baseline == pytest.approx(baseline)

    # the daemon restarts: the state is re-read from the frames table, not lost
    daemon.stop()
    daemon = start_daemon(load_station_config(path), templates=False)
    feed(1, 18, "after-restart")
    assert sample_value(daemon.metrics, "rddn_template_drifted", labels) == 1
    assert sample_value(daemon.metrics, "rddn_template_residual_baseline", labels) == pytest.approx(baseline)

    # a version learned from today's frames: a new baseline, no drift
    from inspector.cli import main as cli_main

    assert cli_main(["templates", "learn", "--config", str(path), "--camera", "cam1", "--position", "P00",
                     "--frames", "6"]) == 0
    wait(lambda: template_row(2) is not None)
    feed(6, 18, "new")
    assert frame_rows(daemon)[-1].template_id == template_row(2).id
    assert sample_value(daemon.metrics, "rddn_template_drifted", labels) == 0
    assert sample_value(daemon.metrics, "rddn_template_version", labels) == 2
    assert sample_value(daemon.metrics, "rddn_template_residual", labels) < baseline + 2
