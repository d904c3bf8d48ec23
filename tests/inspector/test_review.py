"""Review events: append-only log, derived frame state, validation, history integration (SQLite and PostgreSQL)."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from inspector.cli import main
from inspector.db import Base, DetectionRow, Frame, FrameReview, ReviewEvent, make_engine, upgrade_database
from inspector.db.records import open_station_database
from inspector.db.session import make_session_factory
from inspector.history import HistoryFilter, query_history, query_review_events
from inspector.review import ReviewError, frame_review, rebuild_frame_reviews, record_review

WHEN = datetime(2026, 5, 1, 8, tzinfo=timezone.utc)


def seed(factory, camera_id: int) -> dict[str, int]:
    """Frames: 'two' with detections open+short, 'one' with open, 'clean' without, 'bad' quarantined."""
    ids: dict[str, int] = {}
    with factory.begin() as db:
        for name, status, classes in (("two", "defective", ["open", "short"]), ("one", "defective", ["open"]),
                                      ("clean", "ok", []), ("bad", "quarantined", [])):
            frame = Frame(camera_id=camera_id, name=f"{name}.jpg", sha256=name.ljust(64, "0"), position="P00",
                          status=status, source_path=name, processed_at=WHEN,
                          reason="corrupt: x" if status == "quarantined" else None)
            db.add(frame)
            db.flush()
            ids[name] = frame.id
            for i, cls in enumerate(classes):
                det = DetectionRow(frame_id=frame.id, class_id=i, class_name=cls, score=0.9, x1=10 * i, y1=5,
                                   x2=10 * i + 8, y2=20)
                db.add(det)
                db.flush()
                ids[f"{name}.{cls}"] = det.id
    return ids


@pytest.fixture
def db_ids(make_config):
    cfg = make_config()
    engine, factory, cams = open_station_database(cfg)
    yield factory, seed(factory, cams["cam1"])
    engine.dispose()


def review(factory, frame_id, action, reviewer="ann", **kw):
    with factory.begin() as db:
        return record_review(db, frame_id, action, reviewer, **kw)[1]


def summary(factory, frame_id) -> FrameReview | None:
    with factory() as db:
        return db.get(FrameReview, frame_id)


def test_newest_event_wins_and_history_is_kept(db_ids):
    factory, ids = db_ids
    two, open_, short = ids["two"], ids["two.open"], ids["two.short"]
    state = review(factory, two, "confirm", detection_id=open_)
    assert state.state == "partial" and state.detections[short].state == "unreviewed"
    assert summary(factory, two).pending == 1
    state = review(factory, two, "false_call", detection_id=short)
    assert state.state == "corrected"  # one true, one false call: the reviewer corrected the machine
    state = review(factory, two, "false_call", reviewer="bob")  # frame verdict: everything false
    assert state.state == "false_call" and state.count("false_call") == 2 and state.last_reviewer == "bob"
    state = review(factory, two, "wrong_class", detection_id=short, class_name="open")
    assert state.detections[short].state == "wrong_class" and state.detections[short].class_name == "open"
    assert state.state == "corrected"
    assert [(t.class_name, t.origin) for t in state.truth] == [("open", "reclassified")]
    state = review(factory, two, "confirm")  # frame confirm overrides all detection verdicts
    assert state.state == "confirmed" and state.count("confirmed") == 2
    assert sorted(t.class_name for t in state.truth) == ["open", "short"]
    with factory() as db:
        events = db.scalars(select(ReviewEvent).where(ReviewEvent.frame_id == two).order_by(ReviewEvent.id)).all()
        assert [e.action for e in events] == ["confirm", "false_call", "false_call", "wrong_class", "confirm"]
        assert [e.reviewer for e in events] == ["ann", "ann", "bob", "ann", "ann"]
    row = summary(factory, two)
    assert (row.state, row.confirmed, row.false_calls, row.events, row.last_reviewer) == ("confirmed", 2, 0, 5, "ann")


def test_missed_boxes_and_retract(db_ids):
    factory, ids = db_ids
    clean = ids["clean"]
    assert summary(factory, clean) is None  # unreviewed: no row
    state = review(factory, clean, "missed", class_name="short", box=(1, 2, 30, 40))
    assert state.state == "corrected" and [t.box for t in state.truth] == [(1.0, 2.0, 30.0, 40.0)]
    box_event = state.missed[0].event_id
    state = review(factory, clean, "retract", target_event_id=box_event)
    assert state.missed == [] and state.state == "partial"  # no verdict on the clean frame yet
    state = review(factory, clean, "confirm")
    assert state.state == "confirmed" and state.truth == []  # a true negative
    one = ids["one"]
    state = review(factory, one, "confirm", detection_id=ids["one.open"])
    assert state.state == "confirmed"
    state = review(factory, one, "missed", class_name="open", box=(50, 50, 60, 70))
    assert state.state == "corrected" and [t.origin for t in state.truth] == ["confirmed", "missed"]
    assert (summary(factory, one).missed, summary(factory, one).confirmed) == (1, 1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(frame="two", action="approve"), "unknown review action"),
    (dict(frame="two", action="missed", class_name="open"), "needs a box"),
    (dict(frame="two", action="missed", class_name="open", box=(5, 5, 5, 9)), "empty"),
    (dict(frame="two", action="missed", class_name="open", box=(-1, 0, 5, 9)), "outside"),
    (dict(frame="two", action="missed", class_name="open", box=(0, 0, 500, 9), image_size=(128, 128)), "outside"),
    (dict(frame="two", action="missed", box=(1, 1, 5, 9)), "needs the class"),
    (dict(frame="two", action="wrong_class", det="two.open", class_name="dust"), "unknown class"),
    (dict(frame="two", action="wrong_class", det="two.open", class_name="open"), "already has class"),
    (dict(frame="two", action="missed", det="two.open", class_name="open", box=(1, 1, 5, 9)), "applies to a frame"),
    (dict(frame="two", action="wrong_class", class_name="open"), "needs a detection"),
    (dict(frame="one", action="confirm", det="two.open"), "does not belong"),
    (dict(frame="bad", action="confirm"), "quarantined"),
    (dict(frame="two", action="retract"), "'retract' needs"),
    (dict(frame="two", action="confirm", reviewer=""), "reviewer"),
    (dict(frame="two", action="confirm", comment="x" * 2001), "comment"),
])
def test_invalid_reviews_are_refused_and_leave_nothing(db_ids, kwargs, message):
    factory, ids = db_ids
    kw = dict(kwargs)
    frame = ids[kw.pop("frame")]
    action = kw.pop("action")
    reviewer = kw.pop("reviewer", "ann")
    det = kw.pop("det", None)
    with pytest.raises(ReviewError, match=message):
        with factory.begin() as db:
            record_review(db, frame, action, reviewer, detection_id=ids[det] if det else None,
                          class_names=["open", "short"], **kw)
    with factory() as db:
        assert db.scalar(select(ReviewEvent.id)) is None and db.scalar(select(FrameReview.frame_id)) is None
    with pytest.raises(ReviewError, match="no frame"):
        with factory.begin() as db:
            record_review(db, 10**6, "confirm", "ann")


def _append_only(factory) -> None:
    with pytest.raises(DBAPIError, match="append-only"):
        with factory.begin() as db:
            db.execute(text("UPDATE review_events SET action = 'confirm'"))


def test_events_are_append_only_and_summaries_rebuild_from_them(db_ids):
    factory, ids = db_ids
    review(factory, ids["two"], "false_call", detection_id=ids["two.short"])
    review(factory, ids["one"], "confirm")
    review(factory, ids["clean"], "missed", class_name="open", box=(1, 1, 9, 9))
    _append_only(factory)
    with factory() as db:
        before = {r.frame_id: (r.state, r.confirmed, r.false_calls, r.missed, r.pending)
                  for r in db.scalars(select(FrameReview))}
    with factory.begin() as db:
        db.execute(text("DELETE FROM frame_reviews"))
        assert rebuild_frame_reviews(db) == 3
    with factory() as db:
        after = {r.frame_id: (r.state, r.confirmed, r.false_calls, r.missed, r.pending)
                 for r in db.scalars(select(FrameReview))}
        assert after == before == {ids["two"]: ("partial", 0, 1, 0, 1), ids["one"]: ("confirmed", 1, 0, 0, 0),
                                   ids["clean"]: ("corrected", 0, 0, 1, 0)}
        assert frame_review(db, ids["two"]).detections[ids["two.short"]].state == "false_call"


def test_history_shows_review_state_verdicts_and_the_log(db_ids, make_config, write_config, capsys):
    factory, ids = db_ids
    review(factory, ids["two"], "wrong_class", detection_id=ids["two.short"], class_name="open",
           comment="a spur, not a short")
    review(factory, ids["two"], "confirm", detection_id=ids["two.open"], reviewer="bob")
    with factory() as db:
        rows = query_history(db, HistoryFilter(station="teststation"))
        by_det = {(r.frame, r.cls): (r.review, r.verdict) for r in rows}
        assert by_det[("two.jpg", "short")] == ("corrected", "wrong_class:open")
        assert by_det[("two.jpg", "open")] == ("corrected", "confirmed")
        assert by_det[("one.jpg", "open")] == ("unreviewed", "unreviewed")
        assert by_det[("clean.jpg", None)] == ("unreviewed", None)
        assert {r.frame for r in query_history(db, HistoryFilter(review="corrected"))} == {"two.jpg"}
        assert {r.frame for r in query_history(db, HistoryFilter(review="unreviewed"))} == {
            "one.jpg", "clean.jpg", "bad.jpg"}
        log = query_review_events(db, HistoryFilter(camera="cam1"))
        assert [(e["reviewer"], e["action"], e["class"]) for e in log] == [("bob", "confirm", None),
                                                                           ("ann", "wrong_class", "open")]
    path = write_config()  # the same database through the CLI
    assert main(["history", "--config", str(path), "--reviews", "--format", "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed[1]["comment"] == "a spur, not a short" and printed[0]["reviewer"] == "bob"
    assert main(["history", "--config", str(path), "--review", "corrected", "--format", "json"]) == 0
    assert {r["verdict"] for r in json.loads(capsys.readouterr().out)} == {"confirmed", "wrong_class:open"}


@pytest.mark.postgres
def test_reviews_on_postgresql(fresh_postgres_url, make_config):
    engine = make_engine(fresh_postgres_url)
    upgrade_database(engine)
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    factory = make_session_factory(engine)
    from inspector.db.records import ensure_station

    cams = ensure_station(factory, make_config(database_url=fresh_postgres_url))
    ids = seed(factory, cams["cam1"])
    assert review(factory, ids["two"], "false_call").state == "false_call"
    assert review(factory, ids["two"], "confirm", detection_id=ids["two.open"]).state == "corrected"
    _append_only(factory)
    assert summary(factory, ids["two"]).events == 2
    engine.dispose()
