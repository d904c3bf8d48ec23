"""The replay endpoint of the ZeroMQ bus: any committed alarm or result, by (session, seq), in bounded pages.

Protocol (ZeroMQ REQ or DEALER against the daemon's ROUTER; one JSON object per request, see
docs/operations.md "Replay"):

    request  {"session": "<uuid>" | null, "after": 0, "stream": "alarm" | "result", "limit": 100}
    reply    [header, message, message, ...]       header: {"type": "replay", "count", "more", "next_after", ...}

``session`` null means the current session; ``stream`` defaults to ``alarm``; ``limit`` (optional) lowers the page
size. A page holds at most ``max_count`` messages and ``max_bytes`` of them (at least one message, so a client
always progresses); ``more`` true means ask again with ``after = next_after``. Bad requests get
``{"type": "error", "error": "<code>", "message": "<what was wrong with the request>"}``, never internal text.

Why bounded: a reply used to hold the whole session (76 MB for 20,000 alarms), so 40 requests whose replies were
never read took the daemon to 3.2 GB and stalled its heartbeats. Now a page is read from the database row by row
(``yield_per``) and stops at the byte cap, the server runs on its own thread (heartbeats and frame work never wait
for it), every peer address gets a token bucket, requests larger than ``max_request_bytes`` are dropped by libzmq
(``ZMQ_MAXMSGSIZE``) before they reach Python, and a peer that does not read its replies holds at most
``send_hwm`` pages in libzmq (further replies to it are dropped).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Annotated, Callable, Literal, Union

import zmq
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from inspector.db.models import Alarm, BusSession, ResultRow
from inspector.logging_json import log_fields
from inspector.outputs.result import SCHEMA_VERSION

log = logging.getLogger("inspector.outputs.replay")
STREAMS = {"alarm": Alarm, "result": ResultRow}
MAX_TRACKED_PEERS = 4096


class ReplayLimits(BaseModel):
    """``bus.replay_limits``: what one request may cost the daemon."""

    model_config = ConfigDict(extra="forbid")

    max_count: int = Field(500, ge=1, le=100_000, description="messages per reply page")
    max_bytes: int = Field(256 * 1024, ge=4096, le=64 * 1024 * 1024, description="bytes of messages per page")
    max_request_bytes: int = Field(4096, ge=256, le=1024 * 1024, description="ZMQ_MAXMSGSIZE of the replay socket")
    peer_rate: float = Field(20.0, gt=0, description="requests per second per peer address (sustained)")
    peer_burst: int = Field(40, ge=1, description="requests a peer may send at once")
    send_hwm: int = Field(2, ge=1, le=1000, description="reply pages queued per connection that does not read")


class RequestError(ValueError):
    """What was wrong with a replay request (the text goes back to the client verbatim)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, populate_by_name=True,
                              json_schema_serialization_defaults_required=True)


class ReplayRequest(_Strict):
    """One request to the replay endpoint (a JSON object, one frame)."""

    session: str | None = Field(None, min_length=1, max_length=64,
                                description="session id (from a message or a birth); null: the current session")
    after: int = Field(0, ge=0, lt=2**63, description="the last seq you have: the page starts after it")
    stream: Literal["alarm", "result"] = "alarm"
    limit: int | None = Field(None, ge=1, description="at most this many messages (the server caps it too)")


class ReplayPage(_Strict):
    """The first frame of a reply; the messages (alarms or results, as published) follow as frames."""

    schema_version: Literal[2] = Field(SCHEMA_VERSION, alias="schema")
    type: Literal["replay"] = "replay"
    station: str
    session: str
    stream: Literal["alarm", "result"]
    known_session: bool = Field(description="false: the database has no such session")
    after: int = Field(ge=0, description="as requested")
    count: int = Field(ge=0, description="messages in this page")
    bytes: int = Field(ge=0, description="their total size")
    more: bool = Field(description="true: ask again with after = next_after for the next page")
    next_after: int = Field(ge=0, description="seq of the page's last message (= after when the page is empty)")
    last_seq: int = Field(ge=0, description="the session's last committed seq of this stream")


class ReplayRefusal(_Strict):
    """The only frame of a reply to a request the server did not serve."""

    schema_version: Literal[2] = Field(SCHEMA_VERSION, alias="schema")
    type: Literal["error"] = "error"
    error: Literal["bad_request", "rate_limited"]
    message: str = Field(description="what was wrong with the request")


ReplayReply = Annotated[Union[ReplayPage, ReplayRefusal], Field(discriminator="type")]


def parse_request(body: bytes) -> ReplayRequest:
    """The request, or RequestError saying (in words about the request, not our internals) what is wrong."""
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise RequestError("bad_request", 'request is not JSON (expected {"session": ..., "after": N})') from None
    if not isinstance(request, dict):
        raise RequestError("bad_request", 'request must be a JSON object {"session", "after", "stream", "limit"}')
    try:
        return ReplayRequest.model_validate(request)
    except ValidationError as exc:
        problems = "; ".join(f"'{'.'.join(str(p) for p in err['loc']) or 'request'}': {err['msg']}"
                             for err in exc.errors(include_url=False, include_input=False)[:5])
        raise RequestError("bad_request", problems) from None


@dataclass
class TokenBucket:
    rate: float
    burst: float
    tokens: float
    stamp: float = field(default_factory=time.monotonic)

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class PeerLimiter:
    """Token bucket per peer address, the least recently seen peers forgotten beyond MAX_TRACKED_PEERS."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self._peers: OrderedDict[str, TokenBucket] = OrderedDict()

    def allow(self, peer: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        bucket = self._peers.get(peer)
        if bucket is None:
            bucket = self._peers[peer] = TokenBucket(self.rate, self.burst, self.burst, now)
            if len(self._peers) > MAX_TRACKED_PEERS:
                self._peers.popitem(last=False)
        else:
            self._peers.move_to_end(peer)
        return bucket.take(now)


class ReplayServer:
    """Owns the ROUTER socket (created and bound by the ZeroMQ output) on its own thread."""

    def __init__(self, router: zmq.Socket, factory: sessionmaker[Session], station: str,
                 current_session: Callable[[], str], limits: ReplayLimits) -> None:
        self.router = router
        self.factory = factory
        self.station = station
        self.current_session = current_session
        self.limits = limits
        self.peers = PeerLimiter(limits.peer_rate, limits.peer_burst)
        self.requests = 0
        self.refused: dict[str, int] = {}  # error code -> count
        self.pages_bytes_max = 0  # largest page sent (figures, tests)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bus-replay", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.router.close(linger=0)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- thread --------------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self.router.poll(200, zmq.POLLIN):
                    self._serve_pending()
            except Exception:  # noqa: BLE001 - report and keep serving: the replay endpoint must not vanish
                log.exception("replay request failed")

    def _serve_pending(self) -> None:
        while not self._stop.is_set():
            try:
                parts = self._recv_request()
            except zmq.Again:
                return
            if parts is not None:
                self._answer(*parts)

    def _recv_request(self) -> tuple[list[bytes], bytes, str, int] | None:
        """(envelope, body, peer, parts) of the next request. Parts are read one at a time, so an oversized
        multipart request costs at most one part (each bounded by ZMQ_MAXMSGSIZE) in memory."""
        identity = self.router.recv(zmq.NOBLOCK)
        envelope, body, count = [identity], b"", 1
        frame: zmq.Frame | None = None
        while self.router.getsockopt(zmq.RCVMORE):
            frame = self.router.recv(copy=False)
            count += 1
            if count == 2 and not frame.bytes:
                envelope.append(b"")  # REQ/DEALER delimiter
            elif count <= 3:
                body = frame.bytes
        peer = _peer_address(frame) or identity.hex()
        return envelope, body, peer, count

    def _answer(self, envelope: list[bytes], body: bytes, peer: str, parts: int) -> None:
        self.requests += 1
        try:
            if not self.peers.allow(peer):
                raise RequestError("rate_limited", f"more than {self.limits.peer_rate:g} requests/s from this address; "
                                                   "slow down and retry")
            if parts > 3 or (parts == 3 and envelope[-1] != b""):
                raise RequestError("bad_request", "a request is one frame (after the REQ/DEALER empty delimiter)")
            frames = self._page(parse_request(body))
        except RequestError as exc:
            self.refused[exc.code] = self.refused.get(exc.code, 0) + 1
            log.info("replay request refused", **log_fields(peer=peer, error=exc.code, detail=str(exc)))
            frames = [ReplayRefusal(error=exc.code, message=str(exc)).model_dump_json(by_alias=True).encode()]
        try:
            self.router.send_multipart([*envelope, *frames], zmq.NOBLOCK)
        except zmq.Again:  # ROUTER_MANDATORY: this peer did not read its previous replies (send_hwm): drop
            self.refused["unread_replies"] = self.refused.get("unread_replies", 0) + 1
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EHOSTUNREACH:  # the peer left before its reply: nothing to do
                raise

    def _page(self, request: ReplayRequest) -> list[bytes]:
        """Header + at most ``limit`` messages / ``max_bytes`` (at least one), read from the DB row by row."""
        model = STREAMS[request.stream]
        limit = min(request.limit or self.limits.max_count, self.limits.max_count)
        session_id = request.session or self.current_session()
        messages: list[bytes] = []
        size, more, last_in_page = 0, False, request.after
        with self.factory() as db:
            sess = db.get(BusSession, session_id)
            rows = db.execute(select(model.seq, model.payload)
                              .where(model.session_id == session_id, model.seq > request.after)
                              .order_by(model.seq).limit(limit + 1)
                              .execution_options(yield_per=64))
            for seq, payload in rows:
                data = payload.encode()
                if messages and (len(messages) >= limit or size + len(data) > self.limits.max_bytes):
                    more = True
                    break
                messages.append(data)
                size += len(data)
                last_in_page = seq
            rows.close()
        self.pages_bytes_max = max(self.pages_bytes_max, size)
        last = 0 if sess is None else (sess.last_seq if request.stream == "alarm" else sess.last_result_seq)
        header = ReplayPage(station=self.station, session=session_id, stream=request.stream,
                            known_session=sess is not None, after=request.after, count=len(messages), bytes=size,
                            more=more, next_after=last_in_page, last_seq=last)
        return [header.model_dump_json(by_alias=True).encode(), *messages]


def _peer_address(frame: zmq.Frame | None) -> str | None:
    """The TCP peer's IP (libzmq message metadata); None for other transports."""
    if frame is None:
        return None
    try:
        return str(frame.get("Peer-Address"))
    except zmq.ZMQError:
        return None
