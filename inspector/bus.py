"""ZeroMQ alarm bus: PUB for alarms/heartbeats/birth/death, ROUTER for replay (the ZeroMQ guide's Clone pattern).

Topics: ``alarm.<station>.<severity>`` for alarms, ``status.<station>.birth|heartbeat|death`` for liveness.
Every message is two frames: topic, JSON. Each daemon run is a *session* (uuid) whose alarms carry a gap-free
sequence 1, 2, 3, ... assigned in the same DB transaction as the frame result, so the database is the source of
truth and the replay endpoint can serve any alarm a subscriber missed. Heartbeats carry the last sequence so a
subscriber notices a missed *last* alarm too; a crash shows as missing heartbeats (no death message).

ZeroMQ sockets are not thread-safe: one bus thread owns PUB and ROUTER; other threads hand messages over an
inproc PUSH/PULL pair (guarded by a lock on the PUSH side), which wakes the bus thread at once.
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
        self._inproc = f"inproc://bus-{uuid.uuid4().hex}"
        self._push: zmq.Socket | None = None
        self._push_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.published_seq = 0
        self.published_count = 0
        self.replay_requests = 0
        self.publish_latency_ms: deque[float] = deque(maxlen=10_000)
        self.bound_publish: str | None = None
        self.bound_replay: str | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self, timeout: float = 5.0) -> None:
        self.curve.start()
        self._pull = self.context.socket(zmq.PULL)
        self._pull.bind(self._inproc)
        self._push = self.context.socket(zmq.PUSH)
        self._push.connect(self._inproc)
        self._thread = threading.Thread(target=self._run, name="alarm-bus", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("alarm bus did not start in time")
        if self._error is not None:
            raise RuntimeError(f"alarm bus cannot bind {self.publish_endpoint} / {self.replay_endpoint}: "
                               f"{self._error}") from self._error
        prev_id, prev_seq = self.previous
        self.send_status("birth", {"previous_session": prev_id, "previous_last_seq": prev_seq})

    def stop(self, timeout: float = 5.0) -> None:
        """Send death (a clean stop), flush, close sockets."""
        if self._thread is None:
            return
        self.send_status("death", {"last_seq": self.published_seq})
        self._stop.set()
        self._thread.join(timeout)
        with self._push_lock:
            if self._push is not None:
                self._push.close(linger=0)
                self._push = None
        self._pull.close(linger=0)
        self.curve.stop()
        self.context.term()
        self._thread = None

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- producers (any thread) -----------------------------------------------------------------------------
    def _hand_over(self, topic: str, body: bytes, seq: int = 0, alarm_id: int = 0, t0: float = 0.0) -> None:
        with self._push_lock:
            if self._push is None:
                raise RuntimeError("alarm bus is not running")
            self._push.send_multipart([topic.encode(), body, json.dumps([seq, alarm_id, t0]).encode()])

    def publish_alarm(self, severity: str, payload: str, seq: int, alarm_id: int, t_result: float) -> None:
        """Queue a committed alarm for the PUB socket; ``t_result`` (perf_counter) is when detection finished."""
        self._hand_over(alarm_topic(self.station, severity), payload.encode(), seq, alarm_id, t_result)

    def send_status(self, kind: str, extra: dict[str, object] | None = None) -> None:
        body = {"schema": SCHEMA_VERSION, "type": kind, "station": self.station, "session": self.session_id,
                "last_seq": self.published_seq, "time": now_iso(), **(extra or {})}
        self._hand_over(status_topic(self.station, kind), json.dumps(body).encode())

    # -- bus thread -----------------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            pub = self.context.socket(zmq.PUB)
            pub.setsockopt(zmq.SNDHWM, 100_000)
            self.curve.secure(pub)
            pub.bind(self.publish_endpoint)
            router = self.context.socket(zmq.ROUTER)
            self.curve.secure(router)
            router.bind(self.replay_endpoint)
            self.bound_publish = pub.getsockopt_string(zmq.LAST_ENDPOINT)
            self.bound_replay = router.getsockopt_string(zmq.LAST_ENDPOINT)
        except zmq.ZMQError as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        poller = zmq.Poller()
        poller.register(self._pull, zmq.POLLIN)
        poller.register(router, zmq.POLLIN)
        next_beat = time.monotonic() + self.heartbeat_s
        published_ids: list[int] = []
        try:
            while True:
                timeout_ms = max(0, int((next_beat - time.monotonic()) * 1000))
                events = dict(poller.poll(timeout_ms))
                if self._pull in events:
                    self._drain(pub, published_ids)
                if router in events:
                    self._serve_replay(router)
                if published_ids:
                    self._mark_published(published_ids)
                    published_ids = []
                if time.monotonic() >= next_beat:
                    self._heartbeat(pub)
                    next_beat = time.monotonic() + self.heartbeat_s
                if self._stop.is_set():
                    self._drain(pub, published_ids)  # death is the last thing producers sent
                    if published_ids:
                        self._mark_published(published_ids)
                    break
        except Exception:  # noqa: BLE001 - the bus thread must report, not vanish
            log.exception("alarm bus thread failed")
        finally:
            pub.close(linger=1000)
            router.close(linger=0)

    def _drain(self, pub: zmq.Socket, published_ids: list[int]) -> None:
        while True:
            try:
                topic, body, meta = self._pull.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            pub.send_multipart([topic, body])
            seq, alarm_id, t0 = json.loads(meta)
            if alarm_id:
                self.publish_latency_ms.append((time.perf_counter() - t0) * 1000.0)
                self.published_seq = max(self.published_seq, seq)
                self.published_count += 1
                published_ids.append(alarm_id)

    def _mark_published(self, ids: list[int]) -> None:
        try:
            with self.factory.begin() as db:
                db.execute(update(Alarm).where(Alarm.id.in_(ids)).values(state="published"))
        except Exception:  # noqa: BLE001 - state is informational; never lose the bus over it
            log.exception("cannot mark alarms published")

    def _heartbeat(self, pub: zmq.Socket) -> None:
        body = {"schema": SCHEMA_VERSION, "type": "heartbeat", "station": self.station, "session": self.session_id,
                "last_seq": self.published_seq, "time": now_iso()}
        if self.health is not None:
            try:
                body["health"] = self.health()
            except Exception:  # noqa: BLE001
                body["health"] = {"state": "unknown"}
        pub.send_multipart([status_topic(self.station, "heartbeat").encode(), json.dumps(body, default=str).encode()])

    def _serve_replay(self, router: zmq.Socket) -> None:
        while True:
            try:
                frames = router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            identity, request = frames[0], frames[-1]
            envelope = frames[:-1]  # identity (+ empty delimiter for REQ clients)
            self.replay_requests += 1
            try:
                header, payloads = self.replay(json.loads(request))
            except Exception as exc:  # noqa: BLE001 - a bad request gets an error reply, not a dead bus
                header, payloads = {"schema": SCHEMA_VERSION, "type": "error", "error": str(exc)}, []
            router.send_multipart([*envelope, json.dumps(header).encode(), *[p.encode() for p in payloads]])
            del identity

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
