"""ZeroMQ alarm bus: PUB for alarms/heartbeats/birth/death, ROUTER for replay (the ZeroMQ guide's Clone pattern).

Topics: ``alarm.<station>.<severity>`` for alarms, ``status.<station>.birth|heartbeat|death`` for liveness.
Every message is two frames: topic, JSON. Each daemon run is a *session* (uuid) whose alarms carry a gap-free
sequence 1, 2, 3, ... assigned in the same DB transaction as the frame result, so the database is the source of
truth and the replay endpoint can serve any alarm a subscriber missed. Heartbeats carry the last sequence so a
subscriber notices a missed *last* alarm too; a crash shows as missing heartbeats (no death message).

ZeroMQ sockets are not thread-safe, but may be used from several threads one at a time behind a full memory
barrier (the guide's socket migration rule): the PUB socket sits behind a lock and the committing thread sends
an alarm itself, right after its commit, with no thread hand-over in the latency path (issue target: published
<= 20 ms after the detection result). The bus thread owns the ROUTER (replay) and sends heartbeats through the
same lock; it never writes to the database, so a locked database (another writer holding SQLite's lock for up
to the busy timeout) cannot delay a heartbeat and make a healthy station look dead. A small marker thread marks
published alarms in the database in batches (one small write every MARK_PERIOD_S, so it does not compete with
the frame commits for SQLite's single writer). The mark is informational: exactly-once and replay rest on the
alarm rows and their sequence, committed with the frame; a mark that fails is retried with the next batch.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import deque
from datetime import datetime, timezone
from typing import Callable

import zmq
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from inspector.db.models import Alarm, BusSession
from inspector.security import CurveServer, CurveSettings

SCHEMA_VERSION = 1
REPLAY_LIMIT = 10_000
MARK_PERIOD_S = 0.5  # how often published alarms are marked in the DB (batched)
log = logging.getLogger("inspector.bus")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def alarm_topic(station: str, severity: str) -> str:
    return f"alarm.{station}.{severity}"


def status_topic(station: str, kind: str) -> str:
    return f"status.{station}.{kind}"


class AlarmSequencer:
    """Gap-free sequence of one session. ``peek`` inside the transaction, ``advance`` only after it commits."""

    def __init__(self, session_id: str, last_seq: int = 0) -> None:
        self.session_id = session_id
        self.last_seq = last_seq
        self._lock = threading.Lock()

    def peek(self) -> int:
        return self.last_seq + 1

    def advance(self, seq: int) -> None:
        with self._lock:
            if seq != self.last_seq + 1:
                raise RuntimeError(f"alarm sequence would skip: last {self.last_seq}, committing {seq}")
            self.last_seq = seq


def open_session(factory: sessionmaker[Session], station: str) -> tuple[str, str | None, int]:
    """Create this run's bus session row; returns (session id, previous session id, its last seq)."""
    session_id = str(uuid.uuid4())
    with factory.begin() as db:
        prev = db.scalar(select(BusSession).where(BusSession.station_id == station)
                         .order_by(BusSession.started_at.desc()).limit(1))
        db.add(BusSession(id=session_id, station_id=station, last_seq=0))
        return session_id, (prev.id if prev else None), (prev.last_seq if prev else 0)


class AlarmBus:
    def __init__(self, station: str, publish_endpoint: str, replay_endpoint: str, factory: sessionmaker[Session],
                 session_id: str, heartbeat_s: float = 1.0, previous: tuple[str | None, int] = (None, 0),
                 health: Callable[[], dict[str, object]] | None = None,
                 curve: CurveSettings | None = None) -> None:
        self.station = station
        self.publish_endpoint = publish_endpoint
        self.replay_endpoint = replay_endpoint
        self.factory = factory
        self.session_id = session_id
        self.heartbeat_s = heartbeat_s
        self.previous = previous
        self.health = health
        self.context = zmq.Context()
        # CURVE (optional): key files are read here, so a bad path fails the start, not the bus thread.
        self.curve = CurveServer(self.context, curve or CurveSettings())
        self._pub: zmq.Socket | None = None
        self._router: zmq.Socket | None = None
        self._pub_lock = threading.Lock()  # every PUB send, from any thread, holds it
        self._to_mark: list[int] = []  # alarm ids published, not yet marked in the DB (under _pub_lock)
        self._thread: threading.Thread | None = None
        self._marker: threading.Thread | None = None
        self._stop = threading.Event()
        self.published_seq = 0
        self.published_count = 0
        self.replay_requests = 0
        self.publish_latency_ms: deque[float] = deque(maxlen=10_000)
        self.bound_publish: str | None = None
        self.bound_replay: str | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Bind PUB and ROUTER (errors name the endpoints), start the bus thread, send birth."""
        self.curve.start()
        try:
            pub = self.context.socket(zmq.PUB)
            pub.setsockopt(zmq.SNDHWM, 100_000)
            self.curve.secure(pub)
            pub.bind(self.publish_endpoint)
            router = self.context.socket(zmq.ROUTER)
            self.curve.secure(router)
            router.bind(self.replay_endpoint)
        except zmq.ZMQError as exc:
            self.curve.stop()
            self.context.destroy(linger=0)
            raise RuntimeError(f"alarm bus cannot bind {self.publish_endpoint} / {self.replay_endpoint}: {exc}") from exc
        self.bound_publish = pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.bound_replay = router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._pub, self._router = pub, router
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="alarm-bus", daemon=True)
        self._thread.start()
        self._marker = threading.Thread(target=self._mark_loop, name="alarm-marker", daemon=True)
        self._marker.start()
        prev_id, prev_seq = self.previous
        self.send_status("birth", {"previous_session": prev_id, "previous_last_seq": prev_seq})

    def stop(self, timeout: float = 5.0) -> None:
        """Send death (a clean stop), let the bus thread finish, mark what was published, close sockets."""
        if self._thread is None:
            return
        self.send_status("death", {"last_seq": self.published_seq})
        self._stop.set()
        self._thread.join(timeout)
        self._thread = None
        if self._marker is not None:
            self._marker.join(timeout)
            self._marker = None
        self._flush_marks()
        with self._pub_lock:
            pub, self._pub = self._pub, None
        if pub is not None:
            pub.close(linger=1000)  # death and the last alarms still go out
        if self._router is not None:
            self._router.close(linger=0)
            self._router = None
        self.curve.stop()
        self.context.term()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- producers (any thread) -----------------------------------------------------------------------------
    def _send(self, topic: str, body: bytes) -> None:
        with self._pub_lock:
            if self._pub is None:
                raise RuntimeError("alarm bus is not running")
            self._pub.send_multipart([topic.encode(), body])

    def publish_alarm(self, severity: str, payload: str, seq: int, alarm_id: int, t_result: float) -> None:
        """Send a committed alarm now; ``t_result`` (perf_counter) is when its detection finished."""
        with self._pub_lock:
            if self._pub is None:
                raise RuntimeError("alarm bus is not running")
            self._pub.send_multipart([alarm_topic(self.station, severity).encode(), payload.encode()])
            self.publish_latency_ms.append((time.perf_counter() - t_result) * 1000.0)
            self.published_seq = max(self.published_seq, seq)
            self.published_count += 1
            self._to_mark.append(alarm_id)

    def send_status(self, kind: str, extra: dict[str, object] | None = None) -> None:
        body = {"schema": SCHEMA_VERSION, "type": kind, "station": self.station, "session": self.session_id,
                "last_seq": self.published_seq, "time": now_iso(), **(extra or {})}
        self._send(status_topic(self.station, kind), json.dumps(body, default=str).encode())

    # -- bus thread -----------------------------------------------------------------------------------------
    def _run(self) -> None:
        router = self._router
        assert router is not None
        next_beat = time.monotonic() + self.heartbeat_s
        try:
            while not self._stop.is_set():
                wake = min(next_beat, time.monotonic() + 0.2)  # 0.2 s: notice stop promptly
                if router.poll(max(0, int((wake - time.monotonic()) * 1000)), zmq.POLLIN):
                    self._serve_replay(router)
                now = time.monotonic()
                if now >= next_beat:
                    self._heartbeat()
                    next_beat = now + self.heartbeat_s
        except Exception:  # noqa: BLE001 - the bus thread must report, not vanish
            log.exception("alarm bus thread failed")

    def _mark_loop(self) -> None:
        """Marker thread: flush the published-alarm marks every MARK_PERIOD_S (``stop`` does the last one)."""
        while not self._stop.wait(MARK_PERIOD_S):
            self._flush_marks()

    def _flush_marks(self) -> None:
        with self._pub_lock:
            ids, self._to_mark = self._to_mark, []
        if not ids:
            return
        try:
            with self.factory.begin() as db:
                db.execute(update(Alarm).where(Alarm.id.in_(ids)).values(state="published"))
        except Exception:  # noqa: BLE001 - state is informational; never lose the bus over it
            log.exception("cannot mark alarms published; retrying with the next batch")
            with self._pub_lock:
                self._to_mark[:0] = ids

    def _heartbeat(self) -> None:
        body: dict[str, object] = {"schema": SCHEMA_VERSION, "type": "heartbeat", "station": self.station,
                                   "session": self.session_id, "last_seq": self.published_seq, "time": now_iso()}
        if self.health is not None:
            try:
                body["health"] = self.health()
            except Exception:  # noqa: BLE001
                body["health"] = {"state": "unknown"}
        self._send(status_topic(self.station, "heartbeat"), json.dumps(body, default=str).encode())

    def _serve_replay(self, router: zmq.Socket) -> None:
        while True:
            try:
                frames = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            request, envelope = frames[-1], frames[:-1]  # envelope: identity (+ empty delimiter for REQ)
            self.replay_requests += 1
            try:
                header, payloads = self.replay(json.loads(request))
            except Exception as exc:  # noqa: BLE001 - a bad request gets an error reply, not a dead bus
                header, payloads = {"schema": SCHEMA_VERSION, "type": "error", "error": str(exc)}, []
            router.send_multipart([*envelope, json.dumps(header).encode(), *[p.encode() for p in payloads]])

    def replay(self, request: dict[str, object]) -> tuple[dict[str, object], list[str]]:
        """Alarms of ``session`` (default: this one) with seq > ``after``, oldest first, at most REPLAY_LIMIT."""
        if not isinstance(request, dict):
            raise ValueError("replay request must be a JSON object {session, after}")
        session_id = str(request.get("session") or self.session_id)
        after = int(request.get("after", 0))  # type: ignore[arg-type]
        with self.factory() as db:
            rows = db.execute(select(Alarm.seq, Alarm.payload).where(Alarm.session_id == session_id, Alarm.seq > after)
                              .order_by(Alarm.seq).limit(REPLAY_LIMIT + 1)).all()
            sess = db.get(BusSession, session_id)
        more = len(rows) > REPLAY_LIMIT
        rows = rows[:REPLAY_LIMIT]
        header = {"schema": SCHEMA_VERSION, "type": "replay", "station": self.station, "session": session_id,
                  "known_session": sess is not None, "after": after, "count": len(rows), "more": more,
                  "last_seq": sess.last_seq if sess else 0}
        return header, [payload for _, payload in rows]
