"""End to end: real observer, real SQLite, real ZeroMQ, the real difference detector, synthetic frames."""
from __future__ import annotations

import json
import os
from pathlib import Path

from sqlalchemy import func, select

from inspector.db import Alarm, DetectionRow, Frame, ResultRow
from inspector.outputs import OutputDispatcher


def frame_rows(daemon) -> list[Frame]:
    with daemon.factory() as db:
        return list(db.scalars(select(Frame).order_by(Frame.id)))


def covers(det, gt) -> bool:
    """The detection contains the true defect's centre (tiny defects get padded boxes from the morphology)."""
    cx, cy = (gt[0] + gt[2]) / 2, (gt[1] + gt[3]) / 2
    return det[0] - 1 <= cx <= det[2] + 1 and det[1] - 1 <= cy <= det[3] + 1


def test_frames_flow_to_db_bus_and_processed(make_config, start_daemon, frames, tails, wait):
    cfg = make_config()
    daemon = start_daemon(cfg)
    tail = tails(daemon, after=0)
    drop = cfg.cameras[0].drop_folder
    truth = {}
    plan = [("P00_a1.jpg", 0, False, False), ("P01_a2.jpg", 1, True, True), ("P00_a3.jpg", 0, True, False),
            ("P01_a4.jpg", 1, False, True), ("P00_a5.jpg", 0, True, True)]
    for name, pos, defective, rename in plan:
        truth[name] = frames.drop(drop, name, pos, defective, via_rename=rename)

    wait(lambda: len(frame_rows(daemon)) == 5 and daemon.wait_idle(0.1))
    rows = {r.name: r for r in frame_rows(daemon)}
    for name, _, defective, _ in plan:
        row = rows[name]
        assert row.status == ("defective" if defective else "ok"), (name, row.status, row.reason)
        assert row.position == name[:3] and row.serial == name[4:6]
        assert row.shift_x is not None and abs(row.shift_x) <= 5 and abs(row.shift_y) <= 5
        boxes = [(d.x1, d.y1, d.x2, d.y2) for d in row.detections]
        for gt in truth[name]:  # every true defect found
            assert any(covers(b, gt) for b in boxes), (name, gt.tolist(), boxes)
        assert len(boxes) <= len(truth[name]) + 1, (name, boxes)  # aligned: no flood of false boxes
        stored = Path(row.stored_path)
        assert stored.is_file() and stored.parent.parent.name == "cam1" and stored.parent.parent.parent == cfg.dir_for("processed")
        if defective:
            assert Path(row.annotated_path).is_file()
    assert sorted(p.name for p in drop.iterdir()) == []

    wait(lambda: len(tail.alarms) == 3)
    assert tail.seqs() == [1, 2, 3]
    assert {a["frame"] for a in tail.alarms} == {"P01_a2.jpg", "P00_a3.jpg", "P00_a5.jpg"}
    first = tail.alarms[0]
    assert first["schema"] == 2 and first["station"] == "teststation" and first["camera"] == "cam1"
    assert first["session"] == daemon.sequencer.session_id and first["detections"]

    # Every frame has a result, in commit order, each linked to its alarm (if any) and its database rows.
    wait(lambda: len(tail.results) == 5)
    results = {r["frame"]: r for r in tail.results}
    assert tail.result_seqs() == [1, 2, 3, 4, 5]
    assert [r["frame"] for r in tail.results] == [name for name, *_ in plan]  # one camera: commit order = drop order
    alarms = {a["frame"]: a for a in tail.alarms}
    for name, _, defective, _ in plan:
        r, row = results[name], rows[name]
        assert r["verdict"] == ("NG" if defective else "OK") and r["frame_id"] == row.id and r["sha256"] == row.sha256
        assert (r["position"], r["serial"]) == (name[:3], name[4:6]) and r["quarantine"] is None
        assert r["image"] == {"width": 128, "height": 128} and r["box_format"] == "xyxy-pixels"
        assert r["template"]["id"] == row.template_id and r["template"]["version"] == 1
        assert r["model"]["id"] == row.model_id and r["model"]["backend"] == "difference"
        assert r["captured_at"] is None and r["processed_at"].endswith("+00:00") and r["received_at"].endswith("+00:00")
        assert [d["box"] for d in r["detections"]] == [[round(v, 1) for v in (d.x1, d.y1, d.x2, d.y2)]
                                                       for d in row.detections]
        if defective:
            alarm = alarms[name]
            assert (r["alarm_seq"], alarm["result_seq"]) == (alarm["seq"], r["seq"])
            assert r["severity"] == alarm["severity"] and r["rule"]["severity"] == alarm["severity"]
            assert r["rule"] == cfg.alarm_rules[r["rule"]["index"]].model_dump(by_alias=True) | {"index": r["rule"]["index"]}
        else:
            assert r["alarm_seq"] is None and r["rule"] is None and r["detections"] == []
    with daemon.factory() as db:
        stored = db.execute(select(ResultRow.seq, ResultRow.verdict, ResultRow.payload).order_by(ResultRow.seq)).all()
    assert [(seq, verdict, json.loads(payload)) for seq, verdict, payload in stored] == [
        (r["seq"], r["verdict"], r) for r in tail.results]  # the database holds exactly what was published
    with daemon.factory() as db:
        wait(lambda: db.scalar(select(func.count()).select_from(Alarm).where(Alarm.state == "published")) == 3)
        assert db.scalar(select(func.count()).select_from(DetectionRow)) == sum(len(r.detections) for r in rows.values()) >= 3
    assert daemon.bus.publish_latency_ms and max(daemon.bus.publish_latency_ms) < 1000


def test_bad_frames_are_quarantined_while_good_frames_flow(make_config, start_daemon, frames, tails, wait, tmp_path):
    cfg = make_config(cameras=[{"id": "cam1", "drop_folder": str(tmp_path / "drop1"), "incomplete_after_s": 1.0}])
    daemon = start_daemon(cfg)
    tail = tails(daemon, after=0)
    wait(lambda: any(m["type"] == "heartbeat" for m in tail.statuses))  # subscribed: what follows arrives live
    drop = cfg.cameras[0].drop_folder
    good, _ = frames.jpeg(0, False)
    (drop / "P00_corrupt.jpg").write_bytes(os.urandom(2000))
    frames.drop(drop, "P00_good1.jpg", 0)
    (drop / "P00_empty.jpg").write_bytes(b"")
    (drop / "P00_trunc.jpg").write_bytes(good[: len(good) // 2])
    frames.drop(drop, "P07_unknown.jpg", 0)  # no template for P07
    (drop / "no pattern here.jpg").write_bytes(good)
    frames.drop(drop, "P01_good2.jpg", 1, via_rename=True)
    (drop / "notes.txt").write_text("not a frame")  # other extension: ignored
    (drop / "P00_x.jpg.part").write_bytes(good)  # temp name: ignored

    wait(lambda: len(frame_rows(daemon)) == 7 and daemon.wait_idle(0.1))
    rows = {r.name: r for r in frame_rows(daemon)}
    assert rows["P00_good1.jpg"].status == "ok" and rows["P01_good2.jpg"].status == "ok"
    expected = {"P00_corrupt.jpg": "corrupt", "P00_empty.jpg": "empty", "P00_trunc.jpg": "incomplete",
                "P07_unknown.jpg": "no_template", "no pattern here.jpg": "bad_name"}
    for name, kind in expected.items():
        row = rows[name]
        assert row.status == "quarantined" and row.reason.startswith(kind), (name, row.reason)
        moved = Path(row.stored_path)
        assert moved.is_file() and cfg.dir_for("quarantine") in moved.parents
        reason = json.loads(moved.with_name(moved.name + ".reason.json").read_text())
        assert reason["kind"] == kind and reason["frame"] == name and reason["reason"]
    assert "P07" in rows["P07_unknown.jpg"].reason
    assert sorted(p.name for p in drop.iterdir()) == ["P00_x.jpg.part", "notes.txt"]
    assert daemon.pipeline.counts["quarantined_no_template"] == 1
    assert daemon.health()["counts"]["quarantined"] == 5
    # Quarantined frames are committed results too: the PLC hears NOT_INSPECTED with the reason, not silence.
    wait(lambda: len(tail.results) == 7)
    results = {r["frame"]: r for r in tail.results}
    assert sorted(r["seq"] for r in tail.results) == list(range(1, 8))
    for name, kind in expected.items():
        r = results[name]
        assert r["verdict"] == "NOT_INSPECTED" and r["quarantine"]["reason"] == kind, r
        assert r["quarantine"]["message"] and r["frame_id"] == rows[name].id and r["alarm_seq"] is None
        assert r["stored"] == rows[name].stored_path
    assert results["no pattern here.jpg"]["position"] is None and results["P07_unknown.jpg"]["position"] == "P07"
    assert results["P07_unknown.jpg"]["image"] == {"width": 128, "height": 128}  # decoded before the template miss
    assert results["P00_empty.jpg"]["image"] is None
    assert [results[n]["verdict"] for n in ("P00_good1.jpg", "P01_good2.jpg")] == ["OK", "OK"]
    assert tail.alarms == [] and tail.tail.state.streams["result"].replayed == 0  # published live, not recovered


def test_restart_processes_frames_that_arrived_while_down(make_config, start_daemon, frames, tails, wait):
    cfg = make_config()
    first = start_daemon(cfg)
    drop = cfg.cameras[0].drop_folder
    frames.drop(drop, "P00_r1.jpg", 0, defective=True)
    wait(lambda: len(frame_rows(first)) == 1 and first.wait_idle(0.1))
    old_session = first.sequencer.session_id
    done = Path(frame_rows(first)[0].stored_path)
    first.stop()

    # while down: new frames, and a crash-after-commit leftover (same name and content back in the drop folder)
    for i in range(3):
        frames.drop(drop, f"P01_down{i}.jpg", 1, defective=(i == 1))
    (drop / "P00_r1.jpg").write_bytes(done.read_bytes())
    done.unlink()

    second = start_daemon(cfg, templates=False)  # templates come from the database
    wait(lambda: len(frame_rows(second)) == 4 and second.wait_idle(0.1))
    rows = frame_rows(second)
    assert [r.name for r in rows].count("P00_r1.jpg") == 1  # idempotent: no second row
    assert {r.name for r in rows} == {"P00_r1.jpg", "P01_down0.jpg", "P01_down1.jpg", "P01_down2.jpg"}
    assert sorted(p.name for p in drop.iterdir()) == []
    assert done.is_file()  # the leftover went where its committed row says
    with second.factory() as db:
        alarms = db.execute(select(Alarm.session_id, Alarm.seq).order_by(Alarm.id)).all()
    assert alarms == [(old_session, 1), (second.sequencer.session_id, 1)]
    assert second.sequencer.session_id != old_session


def test_late_subscriber_replays_what_it_missed(make_config, start_daemon, frames, tails, wait):
    cfg = make_config()
    daemon = start_daemon(cfg)
    drop = cfg.cameras[0].drop_folder
    for i in range(3):
        frames.drop(drop, f"P00_l{i}.jpg", 0, defective=True)
    wait(lambda: daemon.sequencer.last_seq == 3 and daemon.wait_idle(0.1))

    late = tails(daemon, after=0)  # joins after three alarms: replays them from the database
    wait(lambda: len(late.alarms) == 3)
    resume = tails(daemon, after=2, session=daemon.sequencer.session_id)  # a gateway that had seen 1..2
    frames.drop(drop, "P01_l3.jpg", 1, defective=True)
    wait(lambda: len(late.alarms) == 4 and len(resume.alarms) == 2)
    assert late.seqs() == [1, 2, 3, 4] and resume.seqs() == [3, 4]
    assert late.tail.state.replayed >= 3
    assert [a["frame"] for a in late.alarms[:3]] == ["P00_l0.jpg", "P00_l1.jpg", "P00_l2.jpg"]


def test_clean_stop_sends_death_and_records_session(make_config, start_daemon, tails, wait):
    cfg = make_config()
    daemon = start_daemon(cfg)
    tail = tails(daemon)
    wait(lambda: any(s["type"] == "heartbeat" for s in tail.statuses))
    daemon.stop()
    wait(lambda: any(s["type"] == "death" for s in tail.statuses))
    death = [s for s in tail.statuses if s["type"] == "death"][0]
    assert death["session"] == daemon.sequencer.session_id and death["station"] == "teststation"


def test_onnxruntime_model_without_template_runs_unknown_positions(make_config, start_daemon, frames, tails, wait,
                                                                   tiny_artifact, tmp_path):
    """A PTG/no-template model: frames of a position without a template are inspected, not quarantined."""
    from inspector.db import ModelRecord

    art = tiny_artifact(tmp_path / "model", with_template=False)
    cfg = make_config(detector={"backend": "onnxruntime", "artifact": str(art)}, thresholds={"default": 0.05},
                      alarm_rules=[{"class": "short", "severity": "critical"}])
    daemon = start_daemon(cfg, templates=False)
    tail = tails(daemon)
    frames.drop(cfg.cameras[0].drop_folder, "P07_nt1.jpg", 0)
    wait(lambda: len(frame_rows(daemon)) == 1 and len(tail.alarms) == 1)
    row = frame_rows(daemon)[0]
    assert row.status == "defective" and row.template_id is None and row.shift_x is None
    (det,) = row.detections
    assert det.class_name == "short" and (det.x1, det.y1, det.x2, det.y2) == (8.0, 16.0, 40.0, 32.0)  # 32 -> 128 px
    assert tail.alarms[0]["severity"] == "critical" and tail.alarms[0]["detections"][0]["class"] == "short"
    with daemon.factory() as db:
        (model,) = db.scalars(select(ModelRecord)).all()
    from engines.artifact import ArtifactMetadata, sha256_file

    assert model.backend == "onnxruntime" and model.precision == "fp32"
    assert model.sha256 == ArtifactMetadata.load(art).model_sha256 == sha256_file(art / "model.onnx")
    assert row.model_id == model.id and model.class_names == ["scratch", "short"]


def test_retention_deletes_good_frames_when_configured(make_config, start_daemon, frames, wait):
    cfg = make_config(retention={"delete_ok_frames": True})
    daemon = start_daemon(cfg)
    drop = cfg.cameras[0].drop_folder
    frames.drop(drop, "P00_ok.jpg", 0)
    frames.drop(drop, "P01_bad.jpg", 1, defective=True)
    wait(lambda: len(frame_rows(daemon)) == 2 and daemon.wait_idle(0.1))
    rows = {r.name: r for r in frame_rows(daemon)}
    assert rows["P00_ok.jpg"].status == "ok" and rows["P00_ok.jpg"].stored_path is None
    assert Path(rows["P01_bad.jpg"].stored_path).is_file()
    assert list(drop.iterdir()) == [] and not list(cfg.dir_for("processed").rglob("P00_ok*"))


def test_subscriber_recovers_an_unpublished_alarm_across_a_restart(make_config, start_daemon, frames, tails, wait):
    """Crash between commit and publish: the alarm is in the database but never went out. After the restart
    the subscriber learns the old session's last seq (birth/heartbeat) and replays the missing alarm."""
    from inspector.demo.runner import free_port

    bus = {"publish": f"tcp://127.0.0.1:{free_port()}", "replay": f"tcp://127.0.0.1:{free_port()}",
           "heartbeat_s": 0.2}
    cfg = make_config(bus=bus)
    first = start_daemon(cfg)
    tail = tails(first, after=0)
    drop = cfg.cameras[0].drop_folder
    frames.drop(drop, "P00_c1.jpg", 0, defective=True)
    wait(lambda: tail.seqs() == [1])
    wait(lambda: tail.result_seqs() == [1])
    first.pipeline.outputs = OutputDispatcher()  # the next frames commit but "the process dies" before publishing
    frames.drop(drop, "P00_c2.jpg", 0, defective=True)
    frames.drop(drop, "P00_c2ok.jpg", 0)
    wait(lambda: first.sequencer.last() == (2, 3) and first.wait_idle(0.1))
    old_session = first.sequencer.session_id
    first.stop()

    second = start_daemon(cfg, templates=False)
    frames.drop(drop, "P01_c3.jpg", 1, defective=True)
    wait(lambda: len(tail.alarms) == 3 and len(tail.results) == 4)
    new_session = second.sequencer.session_id
    assert [(a["session"], a["seq"]) for a in tail.alarms] == [(old_session, 1), (old_session, 2), (new_session, 1)]
    assert [a["frame"] for a in tail.alarms] == ["P00_c1.jpg", "P00_c2.jpg", "P01_c3.jpg"]
    assert [(r["session"], r["seq"], r["frame"]) for r in tail.results] == [
        (old_session, 1, "P00_c1.jpg"), (old_session, 2, "P00_c2.jpg"), (old_session, 3, "P00_c2ok.jpg"),
        (new_session, 1, "P01_c3.jpg")]
    assert tail.tail.state.streams["result"].replayed >= 2 and tail.tail.state.replayed >= 1  # (+1 if joined late)


def test_detect_cpu_includes_the_supervisor_workers_inference(make_config, start_daemon, frames, wait):
    """Per-stage CPU (benchmarks/daemon_throughput.py) charges inference to 'detect' although it runs on the
    supervisor's worker thread, not on the analysis thread whose clock the stopwatch reads."""
    import time as _time

    from inspector.backends.difference import DifferenceBackend

    class BusyDifference(DifferenceBackend):
        def detect(self, images, templates):
            end = _time.thread_time() + 0.04
            while _time.thread_time() < end:
                pass
            return super().detect(images, templates)

    cfg = make_config()
    daemon = start_daemon(cfg, backend=BusyDifference())
    outcomes = []
    daemon.pipeline.frame_hooks.append(outcomes.append)
    frames.drop(cfg.cameras[0].drop_folder, "P00_busy.jpg", 0)
    wait(lambda: len(outcomes) == 1)
    assert outcomes[0].status in ("ok", "defective")
    assert outcomes[0].stage_cpu_ms["detect"] >= 38.0
