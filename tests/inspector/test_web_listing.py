"""The review list against a brute-force reference: every filter, keyset pages (also through id windows), time
ranges, the live refresh, badges, on SQLite and PostgreSQL."""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import select

from inspector.db.models import Alarm, BusSession, DetectionRow, Frame
from inspector.db.records import ensure_station, open_station_database
from inspector.review import record_review
from inspector.web import listing
from inspector.web.listing import ListFilter

T0 = datetime(2026, 3, 1, tzinfo=timezone.utc)
CLASSES = ("open", "short", "rare")


def seed(factory, cams, n: int = 240, seed: int = 7) -> list[dict]:
    """Frames in commit order (time increasing with id), random position/status/classes/alarm; some reviewed."""
    rng = random.Random(seed)
    truth = []
    with factory.begin() as db:
        db.add(BusSession(id="s1", station_id="teststation", last_seq=0))
        for i in range(n):
            status = rng.choices(["ok", "defective", "quarantined"], [0.6, 0.35, 0.05])[0]
            frame = Frame(camera_id=cams["cam1" if i % 3 else "cam2"], name=f"f{i}.jpg", sha256=f"{i:064x}",
                          position=f"P{rng.randrange(3)}", status=status, source_path="x",
                          processed_at=T0 + timedelta(minutes=i))
            db.add(frame)
            db.flush()
            classes = []
            if status == "defective":
                classes = [rng.choices(CLASSES, [0.6, 0.37, 0.03])[0] for _ in range(rng.randint(1, 2))]
                for cls in classes:
                    db.add(DetectionRow(frame_id=frame.id, class_id=0, class_name=cls, score=0.9, x1=1, y1=1,
                                        x2=5, y2=5))
            severity = None
            if classes and rng.random() < 0.8:
                severity = "critical" if rng.random() < 0.25 else "warning"
                db.add(Alarm(session_id="s1", seq=i + 1, frame_id=frame.id, severity=severity, payload="{}"))
            truth.append({"id": frame.id, "camera": "cam1" if i % 3 else "cam2", "position": frame.position,
                          "status": status, "classes": set(classes), "severity": severity,
                          "at": frame.processed_at, "review": "unreviewed"})
    with factory.begin() as db:
        for t in truth:
            if t["status"] == "defective" and rng.random() < 0.3:
                action = rng.choice(["confirm", "false_call"])
                t["review"] = record_review(db, t["id"], action, "ann")[1].state
    return truth


def reference(truth, f: ListFilter) -> list[int]:
    keep = []
    for t in truth:
        if f.station not in (None, "teststation"):
            continue
        if f.camera and t["camera"] != f.camera or f.position and t["position"] != f.position:
            continue
        if (f.status or ("defective" if f.kind == "defective" else None)) not in (None, t["status"]):
            continue
        if f.kind == "alarms" and t["severity"] is None or f.severity and t["severity"] != f.severity:
            continue
        if f.cls and f.cls not in t["classes"] or f.review and t["review"] != f.review:
            continue
        if f.since and t["at"] < f.since or f.until and t["at"] >= f.until:
            continue
        keep.append(t["id"])
    return sorted(keep, reverse=True)


FILTERS = [
    ListFilter(), ListFilter(kind="alarms"), ListFilter(kind="defective"), ListFilter(camera="cam2"),
    ListFilter(camera="cam1", position="P1"), ListFilter(cls="open"), ListFilter(cls="rare"),
    ListFilter(severity="critical"), ListFilter(status="quarantined"), ListFilter(review="false_call"),
    ListFilter(review="unreviewed", kind="defective"), ListFilter(station="teststation", cls="short"),
    ListFilter(since=T0 + timedelta(minutes=60), until=T0 + timedelta(minutes=150)),
    ListFilter(kind="alarms", since=T0 + timedelta(minutes=37, seconds=30)),
    ListFilter(cls="open", severity="warning", position="P2", until=T0 + timedelta(minutes=200)),
    ListFilter(station="elsewhere"), ListFilter(since=T0 + timedelta(days=30)),
]


def walk(db, f: ListFilter, size: int) -> list[int]:
    ids, cursor = [], None
    for _ in range(1000):
        page = listing.page(db, f, cursor, size)
        ids += [r.frame.id for r in page.rows]
        if page.next_cursor is None:
            return ids
        assert len(page.rows) == size  # only the last page is short
        cursor = page.next_cursor
    raise AssertionError("paging did not end")


def check_all(factory, truth):
    with factory() as db:
        for f in FILTERS:
            expected = reference(truth, f)
            for size in (4, 50):
                assert walk(db, f, size) == expected, (f, size)
        newest = truth[-1]["id"]
        live = listing.page(db, ListFilter(kind="defective"), None, 50, newer_than=newest - 30)
        assert [r.frame.id for r in live.rows] == [i for i in reference(truth, ListFilter(kind="defective"))
                                                  if i > newest - 30]
        window = ListFilter(since=T0 + timedelta(minutes=100), until=T0 + timedelta(minutes=150))
        badges = listing.counts(db, window)
        assert badges["alarms"] == len(reference(truth, ListFilter(kind="alarms", review="unreviewed",
                                                                   since=window.since, until=window.until)))
        assert badges["defective"] == len(reference(truth, ListFilter(kind="defective", review="unreviewed",
                                                                      since=window.since, until=window.until)))
        first = listing.page(db, ListFilter(kind="defective"), None, 5)
        assert [r.severity for r in first.rows] == [next(t["severity"] for t in truth if t["id"] == r.frame.id)
                                                   for r in first.rows]


@pytest.mark.parametrize("first_window", [4096, 8])
def test_pages_match_a_brute_force_reference(make_config, monkeypatch, first_window):
    monkeypatch.setattr(listing, "FIRST_WINDOW", first_window)  # 8: many windows per page
    engine, factory, cams = open_station_database(make_config(cameras=[
        {"id": "cam1", "drop_folder": "/tmp/d1"}, {"id": "cam2", "drop_folder": "/tmp/d2"}]))
    check_all(factory, seed(factory, cams))
    engine.dispose()


def test_bad_filter_values_are_refused():
    for kwargs in ({"kind": "everything"}, {"severity": "fatal"}, {"status": "good"}, {"review": "done"}):
        with pytest.raises(listing.ListError):
            ListFilter(**kwargs)
    for cursor in ("abc", "-1", "1" * 30):
        with pytest.raises(listing.ListError):
            listing.decode_cursor(cursor)


@pytest.mark.postgres
def test_pages_on_postgresql(fresh_postgres_url, make_config, monkeypatch):
    monkeypatch.setattr(listing, "FIRST_WINDOW", 16)
    cfg = make_config(database_url=fresh_postgres_url, cameras=[
        {"id": "cam1", "drop_folder": "/tmp/d1"}, {"id": "cam2", "drop_folder": "/tmp/d2"}])
    engine, factory, cams = open_station_database(cfg)
    assert ensure_station(factory, cfg) == cams
    check_all(factory, seed(factory, cams, n=160))
    with factory() as db:
        assert db.scalar(select(Frame.id).order_by(Frame.id.desc()).limit(1)) == 160
    engine.dispose()
