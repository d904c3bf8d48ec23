"""Bus sessions and their two gap-free sequences (results and alarms), kept in the database.

Each daemon run opens a *session* (uuid). Every committed frame gets the session's next result seq, and a frame
that raises an alarm also the next alarm seq, inside the same transaction as the frame row (``record`` below):
so a ``kill -9`` can never leave a committed frame without its sequence number, nor a number without its frame.
The counters advance in memory only after the commit succeeded; a rolled back transaction leaves no gap.

Readers (replay endpoint, OPC UA GetResult, the review page) load results by ``(session, seq)`` with
:func:`load_result`; the stored JSON is exactly what was published.
"""
from __future__ import annotations

import threading
import uuid
from datetime import datetime, timezone

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from inspector.db.models import Alarm, BusSession, ResultRow
from inspector.db.writer import Transactions
from inspector.outputs.base import SessionInfo
from inspector.outputs.result import FrameResult


def open_session(factory: Transactions, station: str) -> SessionInfo:
    """Create this run's session row; the previous session's last seqs let peers close its tail."""
    session_id = str(uuid.uuid4())
    started = datetime.now(timezone.utc)
    with factory.begin() as db:
        prev = db.scalar(select(BusSession).where(BusSession.station_id == station)
                         .order_by(BusSession.started_at.desc()).limit(1))
        db.add(BusSession(id=session_id, station_id=station, started_at=started, last_seq=0, last_result_seq=0))
    if prev is None:
        return SessionInfo(session_id, started)
    return SessionInfo(session_id, started, prev.id, prev.last_seq, prev.last_result_seq)


class SessionSequencer:
    """The session's counters. ``peek_*`` inside the transaction, ``advance`` only after it committed."""

    def __init__(self, session_id: str, last_alarm_seq: int = 0, last_result_seq: int = 0) -> None:
        self.session_id = session_id
        self.last_seq = last_alarm_seq  # alarms
        self.last_result_seq = last_result_seq
        self._lock = threading.Lock()

    def peek_result(self) -> int:
        return self.last_result_seq + 1

    def peek_alarm(self) -> int:
        return self.last_seq + 1

    def last(self) -> tuple[int, int]:
        with self._lock:
            return self.last_seq, self.last_result_seq

    def advance(self, result: FrameResult) -> None:
        with self._lock:
            if result.seq != self.last_result_seq + 1:
                raise RuntimeError(f"result sequence would skip: last {self.last_result_seq}, committing {result.seq}")
            if result.alarm_seq is not None and result.alarm_seq != self.last_seq + 1:
                raise RuntimeError(f"alarm sequence would skip: last {self.last_seq}, committing {result.alarm_seq}")
            self.last_result_seq = result.seq
            if result.alarm_seq is not None:
                self.last_seq = result.alarm_seq


def record(db: Session, result: FrameResult) -> None:
    """Add the result (and its alarm) to the caller's open transaction, with the session's new last seqs."""
    db.add(ResultRow(session_id=result.session, seq=result.seq, frame_id=result.frame_id,
                     verdict=result.verdict.value, payload=result.to_json()))
    values: dict[str, int] = {"last_result_seq": result.seq}
    alarm = result.alarm_json()
    if alarm is not None:
        assert result.alarm_seq is not None and result.severity is not None
        db.add(Alarm(session_id=result.session, seq=result.alarm_seq, frame_id=result.frame_id,
                     severity=result.severity, state="raised", payload=alarm))
        values["last_seq"] = result.alarm_seq
    db.execute(update(BusSession).where(BusSession.id == result.session).values(**values))


def load_result(factory: sessionmaker[Session], session: str, seq: int) -> FrameResult | None:
    """The committed result ``(session, seq)``, or None when there is none."""
    with factory() as db:
        payload = db.scalar(select(ResultRow.payload).where(ResultRow.session_id == session, ResultRow.seq == seq))
    return None if payload is None else FrameResult.model_validate_json(payload)


def latest_results(factory: sessionmaker[Session], station: str, limit: int = 50) -> list[FrameResult]:
    """The station's most recent results, newest first (a live view's initial fill)."""
    with factory() as db:
        payloads = db.scalars(select(ResultRow.payload).join(BusSession, BusSession.id == ResultRow.session_id)
                              .where(BusSession.station_id == station)
                              .order_by(ResultRow.id.desc()).limit(limit)).all()
    return [FrameResult.model_validate_json(p) for p in payloads]
