"""The review page over a station whose real daemon processed real frames: list, frame panel, crops rendered from
the stored frame + template version + alignment offset, review actions, CSV export, trends, live view."""
from __future__ import annotations

import csv
import io
import json
import threading
import time

import cv2
import numpy as np
from sqlalchemy import select
from webkit import WEB_CLASSES, client, csrf_of, process_frames, read_png, same_site, station_overrides, stored_image

from inspector.cli import main
from inspector.db.models import DetectionRow, Frame, ReviewEvent, Template
from inspector.web.images import crop_window, difference_heat


def defective_with_shift(daemon) -> tuple[Frame, DetectionRow, Template]:
    with daemon.factory() as db:
        for frame in db.scalars(select(Frame).where(Frame.status == "defective").order_by(Frame.id)):
            if frame.detections and (abs(frame.shift_x or 0) >= 1 or abs(frame.shift_y or 0) >= 1):
                return frame, frame.detections[0], db.get(Template, frame.template_id)
    raise AssertionError("no defective frame with a non-zero alignment shift")


def test_crops_are_the_stored_frame_and_the_aligned_template_version(make_config, start_daemon, frames, wait):
    cfg = make_config(**station_overrides())
    daemon = start_daemon(cfg)
    process_frames(daemon, frames, wait, 8)
    frame, det, template = defective_with_shift(daemon)
    # a newer template version afterwards: the crop must still come from the version the frame was inspected with
    daemon.templates.add("cam1", frame.position, 255 - frames.templates[frame.position], source="test v2")
    with client(cfg) as web:
        crops = {k: web.get(f"/img/detections/{det.id}/{k}") for k in ("frame", "template", "diff")}
        for response in crops.values():
            assert response.status_code == 200 and response.headers["content-type"] == "image/png"
            assert response.headers["cache-control"].startswith("private")
        got = {k: read_png(r.content) for k, r in crops.items()}
    image = stored_image(frame.stored_path)
    x1, y1, x2, y2 = crop_window((det.x1, det.y1, det.x2, det.y2), image.shape[1], image.shape[0])
    assert got["frame"].shape[:2] == (y2 - y1, x2 - x1)
    assert np.array_equal(got["frame"], image[y1:y2, x1:x2])
    # independent reference: OpenCV's affine warp of the stored template file by the recorded shift
    reference = stored_image(template.path)
    moved = cv2.warpAffine(reference, np.float32([[1, 0, frame.shift_x], [0, 1, frame.shift_y]]),
                           (reference.shape[1], reference.shape[0]), flags=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE)[y1:y2, x1:x2].astype(int)
    band = int(np.ceil(max(abs(frame.shift_x), abs(frame.shift_y)))) + 1  # the uncovered band takes the frame
    inner = (slice(band, -band), slice(band, -band))
    assert np.abs(got["template"].astype(int)[inner] - moved[inner]).mean() < 1.5
    unshifted = reference[y1:y2, x1:x2].astype(int)
    assert np.abs(got["template"].astype(int)[inner] - unshifted[inner]).mean() > 2  # the shift mattered
    assert np.array_equal(got["diff"], difference_heat(got["frame"], got["template"]))
    # the defect is where the difference is: brighter inside the box than in the crop's surroundings
    bx1, by1, bx2, by2 = (int(det.x1) - x1, int(det.y1) - y1, int(det.x2) - x1, int(det.y2) - y1)
    heat = cv2.absdiff(got["frame"], got["template"]).max(axis=2)
    mask = np.zeros_like(heat, bool)
    mask[by1:by2, bx1:bx2] = True
    assert heat[mask].mean() > 3 * heat[~mask].mean()


def test_list_panel_review_history_and_export(make_config, write_config, start_daemon, frames, wait, capsys):
    cfg = make_config(**station_overrides())
    daemon = start_daemon(cfg)
    ids = process_frames(daemon, frames, wait, 6)
    with daemon.factory() as db:
        defective = db.scalars(select(Frame).where(Frame.status == "defective").order_by(Frame.id.desc())).all()
        ok_frame = db.scalars(select(Frame).where(Frame.status == "ok")).first()
    target = defective[0]
    det_ids = sorted(d.id for d in target.detections)
    with client(cfg) as web:
        page = web.get("/?kind=defective")
        assert page.status_code == 200
        token = csrf_of(page.text)
        listed = [int(i) for i in __import__("re").findall(r'data-id="(\d+)"', page.text)]
        assert listed == [f.id for f in defective]  # newest first, only defective frames
        panel = web.get(f"/ui/frames/{target.id}").text
        for det_id in det_ids:
            for kind in ("frame", "template", "diff"):
                assert f"/img/detections/{det_id}/{kind}" in panel
        assert "class * · score ≥ 0.5 → warning" in panel or "→ critical" in panel  # the rule that fired
        detail = web.get(f"/api/frames/{target.id}").json()
        assert detail["template"]["version"] == 1 and detail["model"]["backend"] == "difference"
        assert detail["shift"] == [target.shift_x, target.shift_y]

        def post(frame_id, **body):
            return web.post(f"/api/frames/{frame_id}/reviews", json=body, headers=same_site(token))

        first = post(target.id, action="confirm", detection_id=det_ids[0])
        assert first.status_code == 200, first.text
        assert first.json()["state"] == ("confirmed" if len(det_ids) == 1 else "partial")
        assert f'data-id="{target.id}"' in first.json()["row"] and "data-frame-id" in first.json()["panel"]
        other = WEB_CLASSES[1] if target.detections[0].class_name == WEB_CLASSES[0] else WEB_CLASSES[0]
        assert post(target.id, action="wrong_class", detection_id=det_ids[-1], **{"class": other}).status_code == 200
        missed = post(target.id, action="missed", box=[2, 3, 20, 30], **{"class": "short"})
        assert missed.status_code == 200 and missed.json()["state"] == "corrected"
        box_event = missed.json()["event"]["id"]
        assert web.get(f"/img/reviews/{box_event}/diff").status_code == 200
        assert post(target.id, action="missed", box=[2, 3, 900, 30], **{"class": "short"}).status_code == 422
        assert post(target.id, action="wrong_class", detection_id=det_ids[0], **{"class": "nonsense"}).status_code == 422
        assert post(ok_frame.id, action="confirm").json()["state"] == "confirmed"
        assert post(ok_frame.id, action="confirm", detection_id=det_ids[0]).status_code == 422  # not its detection
        reviewed = web.get("/api/frames?review=corrected").json()["frames"]
        assert [f["id"] for f in reviewed] == [target.id]
        exported = web.get("/export.csv?kind=defective")
        assert exported.status_code == 200 and "attachment" in exported.headers["content-disposition"]
        rows = list(csv.DictReader(io.StringIO(exported.text)))
    mine = [r for r in rows if int(r["frame_id"]) == target.id]
    assert {r["verdict"] for r in mine} >= {"confirmed", "wrong_class", "missed"}
    assert {int(r["frame_id"]) for r in rows} == {f.id for f in defective}
    assert next(r for r in mine if r["verdict"] == "wrong_class")["reviewed_class"] == other
    with daemon.factory() as db:
        events = db.scalars(select(ReviewEvent).order_by(ReviewEvent.id)).all()
    assert [e.action for e in events] == ["confirm", "wrong_class", "missed", "confirm"]
    assert {e.reviewer for e in events} == {"local"}
    path = write_config(**station_overrides())
    assert main(["history", "--config", str(path), "--reviews", "--format", "json"]) == 0
    log = json.loads(capsys.readouterr().out)
    assert [e["action"] for e in log] == ["confirm", "missed", "wrong_class", "confirm"]
    assert ids  # the daemon wrote them


def test_trends_count_what_the_database_holds(make_config, start_daemon, frames, wait):
    cfg = make_config(**station_overrides())
    daemon = start_daemon(cfg)
    process_frames(daemon, frames, wait, 6)
    with daemon.factory() as db:
        dets = db.scalars(select(DetectionRow)).all()
        frame_rows = db.scalars(select(Frame)).all()
    from inspector.review import record_review
    from inspector.web import trends
    from inspector.web.listing import ListFilter

    defective = [f for f in frame_rows if f.status == "defective"]
    with daemon.factory.begin() as db:
        record_review(db, defective[0].id, "false_call", "ann")
        record_review(db, defective[1].id, "confirm", "ann")
    with daemon.factory() as db:
        hourly = trends.defects_per_hour(db, ListFilter())
        total = {s.name: sum(s.values) for s in hourly.series}
        expected: dict[str, int] = {}
        for d in dets:
            expected[d.class_name] = expected.get(d.class_name, 0) + 1
        assert total == expected
        rates = [r for r in trends.false_call_rate_per_day(db, ListFilter()) if r.reviewed]
        assert len(rates) == 1
        n0, n1 = len(defective[0].detections), len(defective[1].detections)
        assert (rates[0].false_calls, rates[0].reviewed) == (n0, n0 + n1)
        heat = trends.position_heatmap(db, ListFilter())
        by_pos = {r.position: r for r in heat.rows}
        for pos in ("P00", "P01"):
            mine = [f for f in frame_rows if f.position == pos]
            assert by_pos[pos].frames == len(mine)
            assert by_pos[pos].defective == sum(f.status == "defective" for f in mine)
            assert sum(by_pos[pos].per_class.values()) == sum(len(f.detections) for f in mine)
    with client(cfg) as web:
        page = web.get("/trends")
        assert page.status_code == 200 and 'id="chart-hourly"' in page.text and 'id="heatmap"' in page.text


def _read_events(response, found: list, stop: threading.Event) -> None:
    for line in response.iter_lines():
        if line.startswith("data:"):
            found.append(json.loads(line[5:]))
        if stop.is_set():
            return


def test_live_view_announces_new_results_from_the_bus_and_the_database(make_config, start_daemon, frames, wait):
    cfg = make_config(**station_overrides(web={"live": "bus", "poll_interval_s": 30}))
    daemon = start_daemon(cfg)
    process_frames(daemon, frames, wait, 2)
    live_cfg = cfg.model_copy(update={"bus": cfg.bus.model_copy(update={"publish": daemon.bus.bound_publish})})
    for mode in ("bus", "poll"):
        web_cfg = live_cfg.model_copy(update={"web": live_cfg.web.model_copy(update={
            "live": mode, "poll_interval_s": 0.2 if mode == "poll" else 30})})
        with client(web_cfg) as web:
            found: list = []
            stop = threading.Event()
            with web.stream("GET", "/live") as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                reader = threading.Thread(target=_read_events, args=(response, found, stop), daemon=True)
                reader.start()
                wait(lambda: found, timeout=10)  # the hello event
                time.sleep(0.5)  # the SUB socket has joined before the alarm is sent
                before = daemon.pipeline.counts["defective"]
                frames.drop(cfg.cameras[0].drop_folder, f"P01_live{mode}.jpg", 1, defective=True)
                wait(lambda: daemon.pipeline.counts["defective"] > before and daemon.wait_idle(0.1), timeout=20)
                with daemon.factory() as db:
                    newest = db.scalar(select(Frame.id).order_by(Frame.id.desc()).limit(1))
                wait(lambda: any(e.get("frame_id") == newest for e in found), timeout=15)
                assert next(e for e in found if e.get("frame_id") == newest)["source"] == mode
                stop.set()
                rows = web.get(f"/ui/rows?newer_than={newest - 1}").text
                assert f'data-id="{newest}"' in rows


def test_drift_flag_and_use_as_template(make_config, start_daemon, frames, wait):
    """The page shows the daemon's drift verdict (templates.drifted) and promotes only frames judged OK."""
    from sqlalchemy import update

    cfg = make_config(**station_overrides())
    daemon = start_daemon(cfg)
    process_frames(daemon, frames, wait, 4)
    with daemon.factory() as db:
        ok = db.scalars(select(Frame).where(Frame.status == "ok")).first()
        bad = db.scalars(select(Frame).where(Frame.status == "defective")).first()
    daemon.stop()  # its drift tracker would write its own verdict over the one set here
    with daemon.factory.begin() as db:
        db.execute(update(Template).where(Template.active.is_(True), Template.position == ok.position)
                   .values(drifted=True, residual_baseline=2.0, residual_recent=7.5))
    with client(cfg) as web:
        page = web.get("/")
        assert 'id="drift-banner"' in page.text and f"cam1 · {ok.position}" in page.text
        trends_page = web.get("/trends").text
        assert trends_page.count(">drifted<") == 1
        token = csrf_of(page.text)
        refused = web.post(f"/api/frames/{bad.id}/template", headers=same_site(token))
        assert refused.status_code == 422 and "not judged OK" in refused.json()["detail"]
        assert web.post(f"/api/frames/{ok.id}/template").status_code == 403  # CSRF
        made = web.post(f"/api/frames/{ok.id}/template", headers=same_site(token))
        assert made.status_code == 200 and made.json()["version"] == 2
    with daemon.factory() as db:
        active = db.scalar(select(Template).where(Template.active.is_(True), Template.position == ok.position))
    assert active.provenance["frames"] == [ok.id] and active.provenance["by"] == "local" and not active.drifted
