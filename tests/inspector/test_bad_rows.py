"""Bad data is never an outage: names are validated before the database, a row the database refuses quarantines
that frame (``db_rejected``), and only an unavailable database makes frames wait and the station degraded.
Real databases: SQLite (a trigger that refuses a row) and PostgreSQL (a serial longer than its column)."""
from __future__ import annotations

import os
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import (DataError, IntegrityError, InterfaceError, OperationalError, StatementError,
                            TimeoutError as PoolTimeout)

import inspector.naming
from inspector.db import Frame
from inspector.db.errors import is_row_error
from inspector.naming import FrameNameError, parse_frame_name, printable_name
from inspector.quarantine import QuarantineReason

PATTERN = r"^(?P<position>[A-Za-z0-9-]+)_(?P<serial>[A-Za-z0-9-]+)\.(?:jpg|png)$"
STAMPED = r"^(?P<position>P\d+)_(?P<timestamp>[0-9T:+\-Z.]+)\.png$"


def rows(daemon) -> dict[str, Frame]:
    with daemon.factory() as db:
        return {f.name: f for f in db.scalars(select(Frame))}


def test_name_fields_are_validated_before_the_database():
    with pytest.raises(FrameNameError, match="serial has 200 characters"):
        parse_frame_name(PATTERN, f"P1_{'9' * 200}.png")
    with pytest.raises(FrameNameError, match="position has 129 characters"):
        parse_frame_name(PATTERN, f"{'P' * 129}_s1.png")
    assert parse_frame_name(PATTERN, f"{'P' * 128}_{'9' * 128}.png").serial == "9" * 128
    with pytest.raises(FrameNameError, match="not valid UTF-8"):
        parse_frame_name(r"^(?P<position>P1)_.*\.png$", os.fsdecode(b"P1_\xff\xfe.png"))
    with pytest.raises(FrameNameError, match="control characters"):
        parse_frame_name(r"^(?P<position>P1)_.*\.png$", "P1_a\nb.png")
    with pytest.raises(FrameNameError, match="timestamp '2026-13-45' is in no known form"):
        parse_frame_name(r"^(?P<position>P1)_(?P<timestamp>.+)\.png$", "P1_2026-13-45.png")
    assert printable_name(os.fsdecode(b"P1_\xff.png")) == "P1_\\xff.png"


def test_timestamps_in_names_become_aware_utc():
    berlin = __import__("zoneinfo").ZoneInfo("Europe/Berlin")
    with_offset = parse_frame_name(STAMPED, "P1_20260131T120000+0100.png").timestamp
    assert with_offset == datetime(2026, 1, 31, 11, 0, tzinfo=timezone.utc)
    local = parse_frame_name(STAMPED, "P1_20260731T120000.png", berlin).timestamp  # summer: UTC+2
    assert local == datetime(2026, 7, 31, 10, 0, tzinfo=timezone.utc) and local.tzinfo == timezone.utc
    assert parse_frame_name(STAMPED, "P1_20260731T120000.png").timestamp.hour == 12  # default zone: UTC


def test_row_errors_and_outages_are_told_apart():
    orig = Exception("driver says no")
    assert is_row_error(DataError("INSERT", {}, orig))
    assert is_row_error(IntegrityError("INSERT", {}, orig))
    assert is_row_error(StatementError("bind failed", "INSERT", {}, UnicodeEncodeError("utf-8", "\udcff", 0, 1, "x")))
    assert not is_row_error(OperationalError("INSERT", {}, orig))  # connection refused, locked, disk full ...
    assert not is_row_error(InterfaceError("INSERT", {}, orig))
    assert not is_row_error(PoolTimeout("QueuePool limit reached"))

    class PgError(Exception):
        def __init__(self, state: str) -> None:
            super().__init__(state)
            self.sqlstate = state

    from sqlalchemy.exc import DBAPIError, InternalError

    assert is_row_error(DBAPIError("INSERT", {}, PgError("54000")))  # program limit exceeded: the row is too big
    assert not is_row_error(InternalError("INSERT", {}, PgError("XX000")))
    assert not is_row_error(OperationalError("INSERT", {}, PgError("57P01")))  # admin shutdown


def _refusing_trigger(daemon) -> None:
    """The database refuses this one row (as PostgreSQL refuses a value too long): a real constraint error."""
    with daemon.engine.begin() as conn:
        conn.execute(text("CREATE TRIGGER refuse_poison BEFORE INSERT ON frames WHEN NEW.serial = 'poison' "
                          "BEGIN SELECT RAISE(ABORT, 'serial refused by a site rule'); END"))


def _assert_refused_row_is_quarantined_and_nothing_waits(daemon, frames, wait, bad_name: str) -> None:
    drop = daemon.cfg.cameras[0].drop_folder
    frames.drop(drop, bad_name, 0)
    t0 = time.monotonic()
    frames.drop(drop, "P01_after.jpg", 1)
    wait(lambda: {bad_name, "P01_after.jpg"} <= set(rows(daemon)) and daemon.wait_idle(0.1), timeout=15)
    elapsed = time.monotonic() - t0
    found = rows(daemon)
    bad = found[bad_name]
    assert bad.status == "quarantined" and bad.reason_code == QuarantineReason.DB_REJECTED, bad.reason
    assert bad.serial is None and bad.position is None  # written again without the fields the row was refused for
    assert Path(bad.stored_path).is_file() and daemon.cfg.dir_for("quarantine") in Path(bad.stored_path).parents
    assert found["P01_after.jpg"].status == "ok"
    assert daemon.errors["db"] == 0 and daemon.station_health.problems == {}  # never an outage
    assert daemon.state.value == "healthy"
    assert elapsed < 5.0, f"the frames behind the refused one waited {elapsed:.1f} s"
    assert daemon.pipeline.counts["quarantined_db_rejected"] == 1


def test_sqlite_row_refused_by_the_database_is_quarantined(make_config, start_daemon, frames, wait):
    daemon = start_daemon(make_config())
    _refusing_trigger(daemon)
    _assert_refused_row_is_quarantined_and_nothing_waits(daemon, frames, wait, "P00_poison.jpg")


@pytest.mark.postgres
def test_postgres_value_too_long_is_quarantined_not_an_outage(fresh_postgres_url, make_config, start_daemon, frames,
                                                             wait, monkeypatch):
    daemon = start_daemon(make_config(database_url=fresh_postgres_url))
    drop = daemon.cfg.cameras[0].drop_folder
    # As shipped: the 200-digit serial is refused by the name check, before the database sees it.
    frames.drop(drop, f"P00_{'7' * 200}.jpg", 0)
    wait(lambda: f"P00_{'7' * 200}.jpg" in rows(daemon), timeout=10)
    assert rows(daemon)[f"P00_{'7' * 200}.jpg"].reason_code == QuarantineReason.BAD_NAME
    # Without that check (a pattern/column mismatch nobody foresaw) PostgreSQL refuses the row: DataError.
    monkeypatch.setattr(inspector.naming, "MAX_SERIAL_LEN", 10_000)
    _assert_refused_row_is_quarantined_and_nothing_waits(daemon, frames, wait, f"P00_{'9' * 200}.jpg")


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_undecodable_file_names_are_quarantined_with_a_printable_name(backend, request, make_config, frames, wait):
    url = request.getfixturevalue("fresh_postgres_url") if backend == "postgres" else None
    start_daemon = request.getfixturevalue("start_daemon")  # after the database: stopped before it is dropped
    daemon = start_daemon(make_config(database_url=url) if url else make_config())
    drop = daemon.cfg.cameras[0].drop_folder
    data, _ = frames.jpeg(0, False)
    with open(os.path.join(os.fsencode(drop), b"P00_\xff\xfe.jpg"), "wb") as handle:
        handle.write(data)
    frames.drop(drop, "P01_next.jpg", 1)
    wait(lambda: len(rows(daemon)) == 2 and daemon.wait_idle(0.1), timeout=10)
    found = rows(daemon)
    bad = found["P00_\\xff\\xfe.jpg"]
    assert bad.reason_code == QuarantineReason.BAD_NAME and Path(bad.stored_path).is_file()
    assert found["P01_next.jpg"].status == "ok" and daemon.errors == {**daemon.errors, "db": 0, "worker": 0}
    assert os.listdir(os.fsencode(drop)) == []
