"""Database schema/migrations, template versions, history queries and renderings."""
from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select, text

from inspector.db import Alarm, Base, BusSession, DetectionRow, Frame, make_engine, upgrade_database
from inspector.db.migrate import head_revision
from inspector.db.records import ensure_station, open_station_database
from inspector.history import (HistoryFilter, as_records, query_history, render, summary_per_class,
                               summary_per_day)
from inspector.templates import TemplateError, TemplateStore


def test_migrations_create_exactly_the_orm_schema_and_are_idempotent(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'sub' / 'x.db'}")
    upgrade_database(engine)
    upgrade_database(engine)  # second start: no-op
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 10_000
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head_revision()
    engine.dispose()


def test_frame_identity_is_unique(tmp_path, make_config):
    cfg = make_config()
    engine, factory, cams = open_station_database(cfg)
    now = datetime.now(timezone.utc)
    row = dict(camera_id=cams["cam1"], name="a.jpg", sha256="0" * 64, status="ok", source_path="/x", processed_at=now)
    with factory.begin() as db:
        db.add(Frame(**row))
    from sqlalchemy.exc import IntegrityError

    with pytest.raises(IntegrityError):
        with factory.begin() as db:
            db.add(Frame(**row))
    with factory.begin() as db:
        db.add(Frame(**{**row, "sha256": "1" * 64}))  # same name, new content: a new frame
    assert ensure_station(factory, cfg) == cams  # idempotent
    engine.dispose()


def test_template_versions(tmp_path, make_config, frames):
    cfg = make_config()
    engine, factory, cams = open_station_database(cfg)
    store = TemplateStore(cfg, factory, cams)
    img = frames.templates["P00"]
    v1 = store.add("cam1", "P00", img)
    assert store.add("cam1", "P00", img).id == v1.id  # same content: no new version
    v2 = store.add("cam1", "P00", 255 - img)
    assert (v1.version, v2.version) == (1, 2)
    active = store.active("cam1", "P00")
    assert active.id == v2.id and np.array_equal(active.image, 255 - img)
    listed = store.list("cam1")
    assert [(t.version, t.active) for _, t in listed] == [(1, False), (2, True)]
    assert store.active("cam1", "P99") is None
    other = TemplateStore(cfg, factory, cams, recheck_s=0.0)  # another process (the CLI) adds a version
    other.add("cam1", "P99", img)
    assert store.active("cam1", "P99") is None  # still cached ...
    store.recheck_s = 0.0
    assert store.active("cam1", "P99").version == 1  # ... until the periodic re-check sees it
    png = tmp_path / "t.png"
    import cv2

    cv2.imwrite(str(png), cv2.cvtColor(frames.templates["P01"], cv2.COLOR_RGB2BGR))
    t = store.add("cam1", "P01", png)
    assert t.source == str(png) and np.array_equal(store.active("cam1", "P01").image, frames.templates["P01"])
    with pytest.raises(TemplateError, match="no camera"):
        store.add("camX", "P00", img)
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(TemplateError, match="not a readable image"):
        store.add("cam1", "P00", tmp_path / "bad.png")
    engine.dispose()


def seed_history(factory, cams):
    day1 = datetime(2026, 5, 1, 8, tzinfo=timezone.utc)
    day2 = day1 + timedelta(days=1)
    with factory.begin() as db:
        specs = [("f1.jpg", "P00", day1, "defective", [("open", 0.9), ("short", 0.4)]),
                 ("f2.jpg", "P01", day1, "ok", []),
                 ("f3.jpg", "P00", day2, "defective", [("open", 0.7)]),
                 ("f4.jpg", None, day2, "quarantined", [])]
        for name, pos, when, status, dets in specs:
            frame = Frame(camera_id=cams["cam1"], name=name, sha256=name * 8, position=pos, status=status,
                          source_path=name, processed_at=when, reason="corrupt: x" if status == "quarantined" else None)
            db.add(frame)
            db.flush()
            for cls, score in dets:
                db.add(DetectionRow(frame_id=frame.id, class_id=0, class_name=cls, score=score, x1=1, y1=2, x2=3, y2=4))
    return day1, day2


def test_history_filters_summaries_and_formats(make_config):
    cfg = make_config()
    engine, factory, cams = open_station_database(cfg)
    day1, day2 = seed_history(factory, cams)
    with factory() as db:
        everything = query_history(db, HistoryFilter(station="teststation"))
        assert len(everything) == 5  # 3 detections + 2 frames without any
        assert everything[0].frame in ("f3.jpg", "f4.jpg")  # newest first
        assert {r.frame for r in query_history(db, HistoryFilter(cls="open"))} == {"f1.jpg", "f3.jpg"}
        assert {r.frame for r in query_history(db, HistoryFilter(min_score=0.8))} == {"f1.jpg"}
        assert {r.frame for r in query_history(db, HistoryFilter(since=day2))} == {"f3.jpg", "f4.jpg"}
        assert {r.frame for r in query_history(db, HistoryFilter(position="P01"))} == {"f2.jpg"}
        assert {r.frame for r in query_history(db, HistoryFilter(status="quarantined"))} == {"f4.jpg"}
        per_class = summary_per_class(db, HistoryFilter())
        assert per_class == [{"class": "open", "detections": 2, "frames": 2, "max_score": 0.9},
                             {"class": "short", "detections": 1, "frames": 1, "max_score": 0.4}]
        per_day = summary_per_day(db, HistoryFilter())
        assert per_day == [{"day": "2026-05-01", "frames": 2, "defective": 1, "ok": 1},
                           {"day": "2026-05-02", "frames": 2, "defective": 1, "quarantined": 1}]
        records = as_records(query_history(db, HistoryFilter(cls="open")))
    assert json.loads(render(records, "json"))[0]["class"] == "open"
    parsed = list(csv.DictReader(io.StringIO(render(records, "csv"))))
    assert len(parsed) == 2 and parsed[0]["box"] == "1,2,3,4"
    table = render(records, "table").splitlines()
    assert table[0].split()[:4] == ["frame_id", "processed_at", "captured_at", "camera"] and len(table) == 4
    assert render([], "table") == "(no rows)"
    engine.dispose()


def test_history_limit_counts_frames_and_rows_carry_alarm_capture_time_and_offsets(make_config):
    cfg = make_config()
    engine, factory, cams = open_station_database(cfg)
    day1, day2 = seed_history(factory, cams)
    berlin = ZoneInfo("Europe/Berlin")
    with factory.begin() as db:
        db.add(BusSession(id="sess-1", station_id="teststation", last_seq=1))
        f1 = db.scalar(select(Frame).where(Frame.name == "f1.jpg"))
        f1.captured_at = datetime(2026, 5, 1, 9, 59, 30, tzinfo=berlin)  # the camera's local time, +02:00
        f1.serial = "SN1"
        db.flush()
        db.add(Alarm(session_id="sess-1", seq=1, frame_id=f1.id, severity="critical", payload="{}"))
    with factory() as db:
        newest_two = query_history(db, HistoryFilter(limit=2))
        assert {r.frame for r in newest_two} == {"f3.jpg", "f4.jpg"}  # 2 frames, not 2 rows
        four = query_history(db, HistoryFilter(limit=4))  # 4 frames: 5 rows, the oldest (f1) with both detections
        assert sorted(r.frame for r in four) == ["f1.jpg", "f1.jpg", "f2.jpg", "f3.jpg", "f4.jpg"]
        f1_rows = [r for r in four if r.frame == "f1.jpg"]
        assert [r.cls for r in f1_rows] == ["open", "short"]  # highest score first
        assert {(r.severity, r.session, r.seq, r.serial) for r in f1_rows} == {("critical", "sess-1", 1, "SN1")}
        assert f1_rows[0].captured_at == "2026-05-01T07:59:30+00:00"  # stored and shown as UTC, with its offset
        assert f1_rows[0].processed_at == "2026-05-01T08:00:00+00:00"
        local = [r for r in query_history(db, HistoryFilter(limit=4), berlin) if r.frame == "f1.jpg"][0]
        assert local.captured_at == "2026-05-01T09:59:30+02:00" and local.processed_at.endswith("+02:00")
        assert query_history(db, HistoryFilter(cls="short", limit=1))[0].frame == "f1.jpg"
        quarantined = query_history(db, HistoryFilter(status="quarantined"))[0]
        assert quarantined.reason_code is None and quarantined.reason == "corrupt: x"
        assert db.scalar(select(Frame.processed_at).where(Frame.name == "f2.jpg")).tzinfo is not None  # SQLite too
    engine.dispose()


def test_history_command_unknown_camera_or_station_is_an_error(make_config, capsys):
    from inspector.cli import main

    cfg = make_config()
    engine, factory, cams = open_station_database(cfg)
    seed_history(factory, cams)
    engine.dispose()
    url = cfg.db_url
    assert main(["history", "--db", url, "--camera", "cam9"]) == 2
    assert "no camera 'cam9'" in capsys.readouterr().err
    assert main(["history", "--db", url, "--station", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no station 'nope'" in err and "teststation" in err
    assert main(["history", "--db", url, "--station", "teststation", "--camera", "cam1", "--position", "P99"]) == 0
    assert capsys.readouterr().out.strip() == "(no rows)"  # a known camera with nothing matching: no rows
    assert main(["history", "--db", url, "--limit", "1", "--format", "json", "--timezone", "Asia/Kolkata"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert len({r["frame_id"] for r in shown}) == 1 and shown[0]["processed_at"].endswith("+05:30")
    assert main(["history", "--db", url, "--limit", "0"]) == 2


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_upgrading_a_database_that_holds_results_keeps_every_row(backend, request, tmp_path):
    """0004 rebuilds ``frames`` on SQLite (a column becomes nullable): the detections, alarms and reviews that
    reference its rows must survive (with foreign keys on, dropping the old table would cascade-delete them)."""
    url = request.getfixturevalue("fresh_postgres_url") if backend == "postgres" else f"sqlite:///{tmp_path / 'u.db'}"
    engine = make_engine(url)
    upgrade_database(engine, "0003")
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO stations (id, created_at) VALUES ('s', '2026-05-01 08:00:00')"))
        conn.execute(text("INSERT INTO cameras (id, station_id, name) VALUES (1, 's', 'c')"))
        for i, (status, reason) in enumerate([("defective", None), ("quarantined", "corrupt: no end marker")], 1):
            conn.execute(text("INSERT INTO frames (id, camera_id, name, sha256, status, reason, source_path, "
                              "processed_at) VALUES (:i, 1, :n, :h, :s, :r, '/x', '2026-05-01 08:00:00')"),
                         {"i": i, "n": f"f{i}.png", "h": str(i) * 64, "s": status, "r": reason})
        conn.execute(text("INSERT INTO detections (frame_id, class_id, class_name, score, x1, y1, x2, y2) "
                          "VALUES (1, 0, 'open', 0.9, 1, 2, 3, 4)"))
        conn.execute(text("INSERT INTO bus_sessions (id, station_id, started_at, last_seq) "
                          "VALUES ('b', 's', '2026-05-01 08:00:00', 1)"))
        conn.execute(text("INSERT INTO alarms (session_id, seq, frame_id, severity, state, payload, created_at) "
                          "VALUES ('b', 1, 1, 'critical', 'published', '{}', '2026-05-01 08:00:00')"))
        conn.execute(text("INSERT INTO review_events (frame_id, action, reviewer, created_at) "
                          "VALUES (1, 'confirm', 'qa', '2026-05-01 09:00:00')"))
    upgrade_database(engine)
    with engine.connect() as conn:
        counts = {t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar()
                  for t in ("frames", "detections", "alarms", "review_events")}
        codes = dict(conn.execute(text("SELECT name, reason_code FROM frames")).all())
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    assert counts == {"frames": 2, "detections": 1, "alarms": 1, "review_events": 1}
    assert codes == {"f1.png": None, "f2.png": "corrupt"}  # the code of rows written before its column
    with engine.begin() as conn:  # and a frame whose content was never read has no sha256
        conn.execute(text("INSERT INTO frames (id, camera_id, name, status, source_path, processed_at) "
                          "VALUES (3, 1, 'link.png', 'quarantined', '/x', '2026-05-01 10:00:00')"))
    engine.dispose()
