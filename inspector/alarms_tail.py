"""``inspector alarms tail``: subscribe to the bus, deliver every alarm (and, on request, every result) exactly
once and in order, keyed on ``(session, seq)``.

Gap handling (the ZeroMQ guide's Clone pattern): the live PUB stream is fast but lossy (slow joiner, a subscriber
restart, a high-water mark). Alarms and results each carry ``(session, seq)``, ``seq`` gap-free per session and per
stream, and heartbeats carry the session's last seq of both streams. When the next seq is not last+1 (or a
heartbeat/birth is ahead), the missing range is fetched page by page from the daemon's replay endpoint, which
serves it from the database. A birth with a new session also closes the previous session's tail
(``previous_last_seq`` / ``previous_last_result_seq``). Nothing is keyed on the seq alone: a daemon restart starts
a new session at seq 1.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import zmq

REPLAY_TIMEOUT_MS = 3000
CLIENT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024  # ZMQ_MAXMSGSIZE of our receiving sockets (a page is far smaller)
STREAMS = ("alarm", "result")
_LAST_FIELD = {"alarm": "last_seq", "result": "last_result_seq"}


@dataclass
class StreamState:
    """Where one stream (alarms or results) stands: the (session, seq) of the last message delivered."""

    session: str | None = None
    last_seq: int | None = None  # None: not synchronised yet
    start_after: int | None = None  # on first contact: deliver the session's messages after this (None: live only)
    delivered: int = 0
    replayed: int = 0
    gaps: int = 0


@dataclass
class TailState:
    streams: dict[str, StreamState] = field(default_factory=dict)
    heartbeats: int = 0
    statuses: list[dict] = field(default_factory=list)

    # the alarm stream's figures (what most callers want)
    @property
    def session(self) -> str | None:
        return self.streams["alarm"].session

    @property
    def last_seq(self) -> int | None:
        return self.streams["alarm"].last_seq

    @property
    def delivered(self) -> int:
        return self.streams["alarm"].delivered

    @property
    def replayed(self) -> int:
        return self.streams["alarm"].replayed

    @property
    def gaps(self) -> int:
        return self.streams["alarm"].gaps


class ReplayError(RuntimeError):
    pass


def client_socket(context: zmq.Context, kind: int, secure: Callable[[zmq.Socket], None] | None = None) -> zmq.Socket:
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, CLIENT_MAX_MESSAGE_BYTES)
    if secure is not None:
        secure(sock)  # CURVE client keys (inspector.security.secure_client)
    return sock


def replay_pages(context: zmq.Context, endpoint: str, session: str | None, after: int, stream: str = "alarm",
                 timeout_ms: int = REPLAY_TIMEOUT_MS,
                 secure: Callable[[zmq.Socket], None] | None = None) -> Iterator[tuple[dict, list[dict]]]:
    """(header, messages) pages of ``stream`` of ``session`` after ``after``, asking for the next page while the
    server says ``more``. Stop iterating to stop asking."""
    while True:
        sock = client_socket(context, zmq.REQ, secure)
        sock.setsockopt(zmq.RCVTIMEO, timeout_ms)
        try:
            sock.connect(endpoint)
            sock.send(json.dumps({"session": session, "after": after, "stream": stream}).encode())
            frames = sock.recv_multipart()
        except zmq.Again:
            raise ReplayError(f"no answer from replay endpoint {endpoint} within {timeout_ms} ms") from None
        finally:
            sock.close()
        header = json.loads(frames[0])
        if header.get("type") == "error":
            raise ReplayError(f"replay endpoint {endpoint}: {header.get('error')}: {header.get('message')}")
        page = [json.loads(f) for f in frames[1:]]
        yield header, page
        if not header.get("more") or not page:
            return
        after = int(header["next_after"])


def request_replay(context: zmq.Context, endpoint: str, session: str | None, after: int, stream: str = "alarm",
                   timeout_ms: int = REPLAY_TIMEOUT_MS,
                   secure: Callable[[zmq.Socket], None] | None = None) -> tuple[dict, list[dict]]:
    """Every message of ``stream`` of ``session`` after ``after`` (all pages); the last page's header."""
    header: dict = {}
    messages: list[dict] = []
    for header, page in replay_pages(context, endpoint, session, after, stream, timeout_ms, secure):
        messages.extend(page)
    return header, messages


class AlarmTail:
    """Subscriber with gap filling. ``after``: on joining, deliver the current session's messages after this seq
    (0 = everything of the session); None = only messages from now on. ``on_result`` set: results too."""

    def __init__(self, publish_endpoint: str, replay_endpoint: str, station: str | None = None,
                 on_alarm: Callable[[dict], None] | None = None, on_status: Callable[[dict], None] | None = None,
                 after: int | None = None, session: str | None = None, context: zmq.Context | None = None,
                 secure: Callable[[zmq.Socket], None] | None = None,
                 on_result: Callable[[dict], None] | None = None, result_after: int | None = None) -> None:
        self.publish_endpoint = publish_endpoint
        self.replay_endpoint = replay_endpoint
        self.on_status = on_status or (lambda s: None)
        self._handlers = {"alarm": on_alarm or (lambda a: None)}
        starts = {"alarm": after}
        if on_result is not None:
            self._handlers["result"] = on_result
            starts["result"] = after if result_after is None else result_after
        self.state = TailState({kind: StreamState(session=session, last_seq=starts[kind] if session else None,
                                                  start_after=starts[kind]) for kind in self._handlers})
        self.secure = secure  # applied to every socket before connect (CURVE: a bus with keys needs them)
        self._own_context = context is None
        self.context = context or zmq.Context()
        self.sub = client_socket(self.context, zmq.SUB, secure)
        prefix = f".{station}." if station else ""
        for kind in (*self._handlers, "status"):
            self.sub.setsockopt(zmq.SUBSCRIBE, f"{kind}{prefix}".encode())
        self.sub.connect(publish_endpoint)

    def close(self) -> None:
        self.sub.close(linger=0)
        if self._own_context:
            self.context.term()

    # -- delivery ------------------------------------------------------------------------------------------
    def _deliver(self, kind: str, message: dict, replayed: bool) -> None:
        st = self.state.streams[kind]
        st.last_seq = int(message["seq"])
        st.delivered += 1
        st.replayed += int(replayed)
        self._handlers[kind](message)

    def _fill(self, kind: str, session: str, upto: int | None = None) -> None:
        """Replay ``session`` after our last seq (up to ``upto`` exclusive when given)."""
        st = self.state.streams[kind]
        for _, page in replay_pages(self.context, self.replay_endpoint, session, st.last_seq or 0, kind,
                                    secure=self.secure):
            for message in page:
                if upto is not None and message["seq"] >= upto:
                    return
                if message["seq"] == (st.last_seq or 0) + 1:
                    self._deliver(kind, message, replayed=True)

    def _sync(self, kind: str, session: str, live_last: int) -> None:
        """First contact with ``session``: set the baseline, backfilling from ``start_after`` if asked."""
        st = self.state.streams[kind]
        st.session = session
        if st.start_after is None:
            st.last_seq = live_last
        else:
            st.last_seq = st.start_after
            if live_last > st.start_after:
                self._fill(kind, session)

    def _on_message(self, kind: str, message: dict) -> None:
        st = self.state.streams[kind]
        session, seq = message.get("session"), int(message["seq"])
        if session != st.session or st.last_seq is None:
            if st.session is not None and session != st.session:
                self._fill(kind, st.session)  # close the old session's tail first
                st.start_after = 0
            self._sync(kind, session, seq - 1)
        last = st.last_seq or 0
        if seq <= last:
            return  # already delivered (replayed before the live copy arrived)
        if seq > last + 1:
            st.gaps += 1
            self._fill(kind, session, upto=seq)
        self._deliver(kind, message, replayed=False)

    def _on_status(self, kind: str, message: dict) -> None:
        st = self.state.streams[kind]
        session = message.get("session")
        live_last = int(message.get(_LAST_FIELD[kind]) or 0)
        if message.get("type") == "birth" and st.session is not None and st.session != session:
            self._fill(kind, st.session)  # the old session's tail (its last seq: the birth's previous_last_*)
            st.session, st.last_seq, st.start_after = session, 0, 0  # everything of the new session
        elif session != st.session:
            if st.session is not None:
                self._fill(kind, st.session)
                st.start_after = 0
            self._sync(kind, session, live_last)
            return
        if st.last_seq is not None and live_last > st.last_seq:
            st.gaps += 1
            self._fill(kind, session)

    def handle(self, topic: str, message: dict) -> None:
        kind = message.get("type")
        if kind in self._handlers:
            self._on_message(kind, message)
            return
        if kind in STREAMS:
            return  # a stream we did not ask for (a wider subscription)
        self.state.statuses.append(message)
        self.on_status(message)
        if kind == "heartbeat":
            self.state.heartbeats += 1
        for stream in self._handlers:
            self._on_status(stream, message)

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


def _key(message: dict) -> str:
    return f"{str(message['session'])[:8]}:{message['seq']:<5}"


def format_alarm(alarm: dict) -> str:
    dets = ", ".join(f"{d['class']} {d['score']:.2f} @{[int(v) for v in d['box']]}" for d in alarm.get("detections", []))
    return (f"[{_key(alarm)}] ALARM  {alarm['severity'].upper():8} {alarm['station']}/{alarm['camera']} "
            f"pos={alarm['position']} serial={alarm.get('serial')} frame={alarm['frame']}: {dets}")


def format_result(result: dict) -> str:
    verdict = result["verdict"]
    if verdict == "NOT_INSPECTED":
        detail = f"{result['quarantine']['reason']}: {result['quarantine']['message']}"
    elif verdict == "NG":
        detail = ", ".join(f"{d['class']} {d['score']:.2f}" for d in result.get("detections", []))
    else:
        detail = ""
    return (f"[{_key(result)}] RESULT {verdict:13} {result['station']}/{result['camera']} pos={result['position']} "
            f"serial={result.get('serial')} frame={result['frame']}" + (f": {detail}" if detail else ""))
