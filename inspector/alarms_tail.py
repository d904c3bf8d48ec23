"""``inspector alarms tail``: subscribe to the alarm bus, deliver every alarm exactly once and in order.

Gap handling (the ZeroMQ guide's Clone pattern): the live PUB stream is fast but lossy (slow joiner, a
subscriber restart, a high-water mark); every alarm carries (session, seq) with seq gap-free per session, and
heartbeats carry the session's last seq. When the next seq is not last+1 (or a heartbeat is ahead), the missing
range is fetched from the daemon's replay endpoint, which serves it from the database. A birth message with
a new session also closes the previous session's tail (``previous_last_seq``).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Callable

import zmq

REPLAY_TIMEOUT_MS = 3000


@dataclass
class TailState:
    session: str | None = None
    last_seq: int | None = None  # None: not synchronised yet
    delivered: int = 0
    replayed: int = 0
    gaps: int = 0
    heartbeats: int = 0
    statuses: list[dict] = field(default_factory=list)


class ReplayError(RuntimeError):
    pass


def request_replay(context: zmq.Context, endpoint: str, session: str | None, after: int,
                   timeout_ms: int = REPLAY_TIMEOUT_MS,
                   secure: Callable[[zmq.Socket], None] | None = None) -> tuple[dict, list[dict]]:
    """All alarms of ``session`` after ``after`` from the replay endpoint (follows ``more`` pages)."""
    alarms: list[dict] = []
    header: dict = {}
    while True:
        sock = context.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
        if secure is not None:
            secure(sock)  # CURVE client keys (inspector.security.secure_client)
        try:
            sock.connect(endpoint)
            sock.send(json.dumps({"session": session, "after": after}).encode())
            frames = sock.recv_multipart()
        except zmq.Again:
            raise ReplayError(f"no answer from replay endpoint {endpoint} within {timeout_ms} ms") from None
        finally:
            sock.close()
        header = json.loads(frames[0])
        if header.get("type") == "error":
            raise ReplayError(f"replay endpoint {endpoint}: {header.get('error')}")
        page = [json.loads(f) for f in frames[1:]]
        alarms.extend(page)
        if not header.get("more") or not page:
            return header, alarms
        after = page[-1]["seq"]


class AlarmTail:
    """Subscriber with gap filling. ``after``: deliver the current session's alarms after this seq on joining
    (0 = everything of the session); None = only alarms from now on."""

    def __init__(self, publish_endpoint: str, replay_endpoint: str, station: str | None = None,
                 on_alarm: Callable[[dict], None] | None = None, on_status: Callable[[dict], None] | None = None,
                 after: int | None = None, session: str | None = None, context: zmq.Context | None = None,
                 secure: Callable[[zmq.Socket], None] | None = None) -> None:
        self.publish_endpoint = publish_endpoint
        self.replay_endpoint = replay_endpoint
        self.on_alarm = on_alarm or (lambda a: None)
        self.on_status = on_status or (lambda s: None)
        self.start_after = after
        self.state = TailState(session=session, last_seq=after if session else None)
        self.secure = secure  # applied to every socket before connect (CURVE: a bus with keys needs them)
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.sub = self.context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        prefix = f".{station}." if station else ""
        for kind in ("alarm", "status"):
            self.sub.setsockopt(zmq.SUBSCRIBE, f"{kind}{prefix}".encode())
        if secure is not None:
            secure(self.sub)
        self.sub.connect(publish_endpoint)

    def close(self) -> None:
        self.sub.close(linger=0)
        if self._own_context:
            self.context.term()

    # -- delivery ------------------------------------------------------------------------------------------
    def _deliver(self, alarm: dict, replayed: bool) -> None:
        self.state.last_seq = alarm["seq"]
        self.state.delivered += 1
        self.state.replayed += int(replayed)
        self.on_alarm(alarm)

    def _fill(self, session: str, upto: int | None = None) -> None:
        """Replay ``session`` after our last seq (up to ``upto`` exclusive when given)."""
        after = self.state.last_seq or 0
        _, alarms = request_replay(self.context, self.replay_endpoint, session, after, secure=self.secure)
        for alarm in alarms:
            if upto is not None and alarm["seq"] >= upto:
                break
            if alarm["seq"] == (self.state.last_seq or 0) + 1:
                self._deliver(alarm, replayed=True)

    def _sync(self, session: str, live_last: int) -> None:
        """First contact with ``session``: set the baseline, backfilling from ``start_after`` if asked."""
        self.state.session = session
        if self.start_after is None:
            self.state.last_seq = live_last
        else:
            self.state.last_seq = self.start_after
            if live_last > self.start_after:
                self._fill(session)

    def handle(self, topic: str, message: dict) -> None:
        kind = message.get("type")
        session = message.get("session")
        if kind == "alarm":
            seq = int(message["seq"])
            if session != self.state.session or self.state.last_seq is None:
                if self.state.session is not None and session != self.state.session:
                    self._fill(self.state.session)  # close the old session's tail first
                self._sync(session, seq - 1)
            last = self.state.last_seq or 0
            if seq <= last:
                return  # already delivered (replayed before the live copy arrived)
            if seq > last + 1:
                self.state.gaps += 1
                self._fill(session, upto=seq)
            self._deliver(message, replayed=False)
            return
        self.state.statuses.append(message)
        self.on_status(message)
        if kind == "heartbeat":
            self.state.heartbeats += 1
        live_last = int(message.get("last_seq") or 0)
        if kind == "birth":
            if self.state.session is not None and self.state.session != session:
                if message.get("previous_session") == self.state.session:
                    self._fill(self.state.session)
                self.state.session, self.state.last_seq = session, 0
                self.start_after = 0  # everything of the new session
            elif self.state.session is None:
                self._sync(session, live_last)
            return
        if session != self.state.session:
            if self.state.session is not None:
                self._fill(self.state.session)
                self.start_after = 0
            self._sync(session, live_last)
        elif self.state.last_seq is not None and live_last > self.state.last_seq:
            self.state.gaps += 1
            self._fill(session)

    def poll(self, timeout_ms: int = 100) -> int:
        """Handle whatever arrives within ``timeout_ms``; returns the number of messages handled."""
        handled = 0
        if self.sub.poll(timeout_ms, zmq.POLLIN):
            while True:
                try:
                    topic, body = self.sub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self.handle(topic.decode(), json.loads(body))
                handled += 1
        return handled

    def run(self, duration_s: float | None = None, should_stop: Callable[[], bool] = lambda: False) -> TailState:
        deadline = None if duration_s is None else time.monotonic() + duration_s
        while not should_stop() and (deadline is None or time.monotonic() < deadline):
            self.poll(100)
        return self.state


def format_alarm(alarm: dict) -> str:
    dets = ", ".join(f"{d['class']} {d['score']:.2f} @{[int(v) for v in d['box']]}" for d in alarm.get("detections", []))
    return (f"[{alarm['seq']:>5}] {alarm['severity'].upper():8} {alarm['station']}/{alarm['camera']} "
            f"pos={alarm['position']} serial={alarm.get('serial')} frame={alarm['frame']}: {dets}")
