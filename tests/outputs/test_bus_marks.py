"""The ZeroMQ output never writes to the database on its own thread: a locked database cannot stall heartbeats."""
from __future__ import annotations

import contextlib
import json
import threading
import time
from datetime import datetime, timezone
from typing import Iterator

import zmq

from inspector.outputs.base import OutputContext, SessionInfo
from inspector.outputs.result import Verdict
from inspector.outputs.zeromq import ZeroMQOutput


class _LockedDatabase:
    """A session factory whose write transactions block until ``release`` (another writer holding SQLite's lock
    for the whole busy timeout), then record what they executed."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.statements: list[object] = []

    @contextlib.contextmanager
    def begin(self) -> Iterator["_LockedDatabase"]:
        self.entered.set()
        assert self.release.wait(10), "test never released the database"
        yield self

    def execute(self, statement: object) -> None:
        self.statements.append(statement)


def _start_bus(db: object, heartbeat_s: float) -> ZeroMQOutput:
    bus = ZeroMQOutput("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", heartbeat_s=heartbeat_s)
    bus.start(OutputContext("st", SessionInfo("session-1", datetime.now(timezone.utc)), db))  # type: ignore[arg-type]
    return bus


def _heartbeats(sub: zmq.Socket, seconds: float) -> int:
    count, end = 0, time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if sub.poll(int(left * 1000) + 1):
            topic, body = sub.recv_multipart()
            count += json.loads(body)["type"] == "heartbeat"
    return count


def test_heartbeats_keep_their_cadence_while_the_published_mark_waits_for_the_database(make_result) -> None:
    db = _LockedDatabase()
    bus = _start_bus(db, heartbeat_s=0.1)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    try:
        sub.setsockopt(zmq.SUBSCRIBE, b"status.st.heartbeat")
        sub.connect(bus.bound_publish)
        assert _heartbeats(sub, 1.0) >= 1  # connected (slow joiner)
        bus.publish(make_result(1, Verdict.NG, alarm_seq=42))
        assert db.entered.wait(3), "published alarm was never marked"
        # The mark is now stuck on the locked database: heartbeats (every 0.1 s) must go on regardless.
        _heartbeats(sub, 0.05)  # drop the ones sent before the database blocked
        assert _heartbeats(sub, 1.0) >= 5
        db.release.set()
        deadline = time.monotonic() + 3
        while not db.statements and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(db.statements) == 1
        assert [42] in db.statements[0].compile().params.values()  # type: ignore[attr-defined]
    finally:
        db.release.set()
        sub.close(linger=0)
        ctx.term()
        bus.stop()


class _FlakyDatabase(_LockedDatabase):
    """Fails the first write (database locked), then works."""

    def __init__(self) -> None:
        super().__init__()
        self.release.set()
        self.failures = 1

    def execute(self, statement: object) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("database is locked")
        super().execute(statement)


def test_a_failed_mark_is_retried_with_the_next_batch(make_result) -> None:
    db = _FlakyDatabase()
    bus = _start_bus(db, heartbeat_s=5.0)
    try:
        bus.publish(make_result(1, Verdict.NG, alarm_seq=7))
        deadline = time.monotonic() + 5
        while not db.statements and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        bus.stop()
    assert db.failures == 0 and len(db.statements) == 1
    assert [7] in db.statements[0].compile().params.values()  # type: ignore[attr-defined]
