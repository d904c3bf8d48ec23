"""ZeroMQ bus output: XPUB for results, alarms and status; ROUTER for replay (the ZeroMQ guide's Clone pattern).

Topics (two frames each: topic, JSON; schemas in ``inspector/outputs/schemas/``):

- ``result.<station>.<camera>``: every committed frame, OK / NG / NOT_INSPECTED (``FrameResult``);
- ``alarm.<station>.<severity>``: NG results that matched an alarm rule (``AlarmMessage``);
- ``status.<station>.birth|heartbeat|healthy|degraded|death``: liveness and health.

Each daemon run is a *session*; results and alarms each carry a gap-free ``seq`` assigned in the frame's commit
transaction, so the database is the source of truth and the replay endpoint can serve anything a subscriber
missed. Heartbeats carry the last seqs, so a subscriber notices a missed *last* message too; a crash shows as
missing heartbeats (no death message).

Birth that arrives: the PUB side is an XPUB, which sees every (re)subscription (``ZMQ_XPUB_VERBOSE``). A
subscriber's SUB socket resubscribes whenever it (re)connects, so when a subscription that covers the birth topic
arrives the bus sends the current birth and health state again: a subscriber connected all along across a daemon
restart gets the new session's birth as soon as it has reconnected (the birth sent right after bind goes to
nobody: the subscribers are still reconnecting). A repeated birth has the same ``session`` and ``started_at``.

Threads: the committing thread sends results and alarms itself, right after its commit (no hand-over in the
latency path), through ``_pub_lock``; the bus thread sends heartbeats and welcomes through the same lock and reads
subscriptions; the replay thread (``zeromq_replay``) owns the ROUTER. Neither the bus thread nor the replay
thread ever writes to the database, so a locked database cannot delay a heartbeat. A marker thread marks
published alarms (``alarms.state``) in small batches; the mark is informational.

Sockets are made in one place (:meth:`ZeroMQOutput._socket`): CURVE, receive size limits and the socket
hardening of ``inspector.security`` are applied there to every socket the bus binds.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Annotated, Literal, Union

import zmq
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import update

from inspector.db.models import Alarm
from inspector.outputs.base import OutputContext, StationState
from inspector.outputs.result import SCHEMA_VERSION, FrameResult, UtcTime
from inspector.outputs.zeromq_replay import ReplayLimits, ReplayServer
from inspector.security import ConnectionGuard, ConnectionLimits, CurveServer, CurveSettings, harden_socket

if TYPE_CHECKING:
    from inspector.config import BusConfig

log = logging.getLogger("inspector.outputs.zeromq")
MARK_PERIOD_S = 0.5  # how often published alarms are marked in the DB (batched)
SUBSCRIPTION_POLL_S = 0.05  # how soon a new subscriber gets its welcome (birth + state)
PUB_SNDHWM = 100_000  # messages queued per subscriber before the PUB drops (the subscriber replays the gap)
PUB_MAX_SUBSCRIPTION_BYTES = 1024  # ZMQ_MAXMSGSIZE of the XPUB: it receives only subscription topics


class _Status(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True,
                              json_schema_serialization_defaults_required=True)

    schema_version: Literal[2] = Field(SCHEMA_VERSION, alias="schema")
    station: str
    session: str = Field(description="this daemon run's bus session")
    last_seq: int = Field(ge=0, description="last alarm seq published in this session")
    last_result_seq: int = Field(ge=0, description="last result seq published in this session")
    time: UtcTime


class Birth(_Status):
    """``status.<station>.birth``: a session started; sent at start and again to every (re)subscriber."""

    type: Literal["birth"] = "birth"
    started_at: UtcTime = Field(description="when the session started (the same in every repeat)")
    previous_session: str | None = Field(description="the station's session before this one (null: none)")
    previous_last_seq: int = Field(ge=0, description="its last alarm seq: replay it up to here")
    previous_last_result_seq: int = Field(ge=0, description="its last result seq")
    state: Literal["healthy", "degraded"]
    inspection: Literal["available", "unavailable"]
    problems: dict[str, str] = Field(description="component -> what is wrong (empty when healthy)")


class Heartbeat(_Status):
    """``status.<station>.heartbeat``: every ``bus.heartbeat_s``; missing heartbeats mean the daemon is gone."""

    type: Literal["heartbeat"] = "heartbeat"
    health: dict[str, object] = Field(description="state, queue depth, watchers_alive, problems")


class HealthChange(_Status):
    """``status.<station>.healthy|degraded``: sent at once when the station's health changes."""

    type: Literal["healthy", "degraded"]
    inspection: Literal["available", "unavailable"]
    problems: dict[str, str]


class Death(_Status):
    """``status.<station>.death``: a clean stop (a crash sends nothing: heartbeats stop)."""

    type: Literal["death"] = "death"


StatusMessage = Annotated[Union[Birth, Heartbeat, HealthChange, Death], Field(discriminator="type")]


def status_topic(station: str, kind: str) -> str:
    return f"status.{station}.{kind}"


def alarm_topic(station: str, severity: str) -> str:
    return f"alarm.{station}.{severity}"


class ZeroMQOutput:
    name = "zeromq"

    def __init__(self, publish_endpoint: str, replay_endpoint: str, heartbeat_s: float = 1.0,
                 curve: CurveSettings | None = None, replay_limits: ReplayLimits | None = None,
                 connections: ConnectionLimits | None = None) -> None:
        self.publish_endpoint = publish_endpoint
        self.replay_endpoint = replay_endpoint
        self.heartbeat_s = heartbeat_s
        self.replay_limits = replay_limits or ReplayLimits()
        self.connections = connections or ConnectionLimits()
        self.guards: list[ConnectionGuard] = []  # one per bound socket: connection caps (inspector.security)
        self.context = zmq.Context()
        # CURVE (optional): key files are read here, so a bad path fails the start, not the bus thread.
        self.curve = CurveServer(self.context, curve or CurveSettings())
        self._ctx: OutputContext | None = None
        self._pub: zmq.Socket | None = None
        self.replay_server: ReplayServer | None = None
        self._pub_lock = threading.Lock()  # every PUB send and subscription read, from any thread, holds it
        self._to_mark: list[int] = []  # alarm seqs of this session published, not yet marked (under _pub_lock)
        self._thread: threading.Thread | None = None
        self._marker: threading.Thread | None = None
        self._stop = threading.Event()
        self._state = StationState()
        self.published_seq = 0  # last alarm seq sent
        self.published_result_seq = 0
        self.published_count = 0  # alarms
        self.published_results = 0
        self.welcomes = 0
        self.publish_latency_ms: deque[float] = deque(maxlen=10_000)  # alarm sent after detection finished
        self.bound_publish: str | None = None
        self.bound_replay: str | None = None

    @classmethod
    def from_config(cls, bus: "BusConfig") -> "ZeroMQOutput":
        return cls(bus.publish, bus.replay, bus.heartbeat_s, bus.curve, bus.replay_limits, bus.connections)

    @property
    def station(self) -> str:
        assert self._ctx is not None, "bus not started"
        return self._ctx.station

    @property
    def session_id(self) -> str:
        assert self._ctx is not None, "bus not started"
        return self._ctx.session.id

    # -- sockets -------------------------------------------------------------------------------------------
    def _socket(self, kind: int, max_message_bytes: int, name: str) -> zmq.Socket:
        """Every socket the bus binds is made here: CURVE, the receive size limit, linger, the handshake deadline
        and keepalives, and a connection guard (per-socket and per-peer caps)."""
        sock = self.context.socket(kind)
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
        sock.setsockopt(zmq.LINGER, 0)
        harden_socket(sock, self.connections)
        self.curve.secure(sock)
        self.guards.append(ConnectionGuard(sock, self.connections, name))
        return sock

    def _bind_guarded(self, sock: zmq.Socket, endpoint: str) -> None:
        sock.bind(endpoint)
        self.guards[-1].bound(sock.getsockopt_string(zmq.LAST_ENDPOINT))

    def _stop_guards(self) -> None:
        for guard in self.guards:
            guard.stop()
        self.guards = []

    def _bind(self) -> tuple[zmq.Socket, zmq.Socket]:
        pub = self._socket(zmq.XPUB, PUB_MAX_SUBSCRIPTION_BYTES, "publish")
        pub.setsockopt(zmq.SNDHWM, PUB_SNDHWM)
        pub.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription, not only the first per topic: every welcome
        self._bind_guarded(pub, self.publish_endpoint)
        try:
            limits = self.replay_limits
            router = self._socket(zmq.ROUTER, limits.max_request_bytes, "replay")
            router.setsockopt(zmq.SNDHWM, limits.send_hwm)
            router.setsockopt(zmq.RCVHWM, 16)
            router.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a full peer pipe raises EAGAIN (we drop) instead of blocking
            self._bind_guarded(router, self.replay_endpoint)
        except zmq.ZMQError:
            pub.close(linger=0)
            raise
        return pub, router

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self, context: OutputContext) -> None:
        """Bind XPUB and ROUTER (errors name the endpoints), start the bus and replay threads, send birth."""
        self._ctx = context
        self.curve.start()
        try:
            pub, router = self._bind()
        except zmq.ZMQError as exc:
            self.curve.stop()
            self._stop_guards()
            self.context.destroy(linger=0)
            raise RuntimeError(f"alarm bus cannot bind {self.publish_endpoint} / {self.replay_endpoint}: {exc}") from exc
        self.bound_publish = pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.bound_replay = router.getsockopt_string(zmq.LAST_ENDPOINT)
        self._pub = pub
        self.replay_server = ReplayServer(router, context.factory, context.station, lambda: self.session_id,
                                          self.replay_limits)
        self.replay_server.start()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="bus", daemon=True)
        self._thread.start()
        self._marker = threading.Thread(target=self._mark_loop, name="bus-marker", daemon=True)
        self._marker.start()
        with self._pub_lock:
            self._send_locked(status_topic(context.station, "birth"), self._birth())

    def stop(self) -> None:
        """Send death (a clean stop), let the threads finish, mark what was published, close sockets."""
        if self._thread is None:
            return
        with self._pub_lock:
            self._send_locked(status_topic(self.station, "death"), self._status_body(Death))
        self._stop.set()
        self._thread.join(5.0)
        self._thread = None
        if self._marker is not None:
            self._marker.join(5.0)
            self._marker = None
        self._flush_marks()
        if self.replay_server is not None:
            self.replay_server.stop()
        with self._pub_lock:
            pub, self._pub = self._pub, None
        if pub is not None:
            pub.close(linger=1000)  # death and the last messages still go out
        self.curve.stop()
        self._stop_guards()
        self.context.term()

    def is_alive(self) -> bool:
        return (self._thread is not None and self._thread.is_alive()
                and self.replay_server is not None and self.replay_server.is_alive())

    # -- producers (any thread) -----------------------------------------------------------------------------
    def _send_locked(self, topic: str, body: bytes) -> None:
        if self._pub is None:
            raise RuntimeError("alarm bus is not running")
        self._pub.send_multipart([topic.encode(), body])

    def publish(self, result: FrameResult) -> None:
        """Send a committed result, and its alarm if it raised one, now (on the committing thread)."""
        alarm = result.alarm_json()
        with self._pub_lock:
            self._send_locked(result.topic, result.to_json().encode())
            self.published_result_seq = max(self.published_result_seq, result.seq)
            self.published_results += 1
            if alarm is not None:
                assert result.severity is not None and result.alarm_seq is not None
                self._send_locked(alarm_topic(result.station, result.severity), alarm.encode())
                if result.detected_at:
                    self.publish_latency_ms.append((time.perf_counter() - result.detected_at) * 1000.0)
                self.published_seq = max(self.published_seq, result.alarm_seq)
                self.published_count += 1
                self._to_mark.append(result.alarm_seq)

    def state_changed(self, state: StationState) -> None:
        """``status.<station>.degraded`` (inspection unavailable) / ``.healthy``, at once; kept for welcomes."""
        changed = state != self._state
        self._state = state
        if changed:
            with self._pub_lock:
                self._send_locked(status_topic(self.station, state.state), self._state_body())

    def _status_body(self, model: type[_Status], **fields: object) -> bytes:
        message = model(station=self.station, session=self.session_id, last_seq=self.published_seq,
                        last_result_seq=self.published_result_seq, time=datetime.now(timezone.utc), **fields)
        return message.model_dump_json(by_alias=True).encode()

    def _health_fields(self) -> dict[str, object]:
        st = self._state
        return {"inspection": "available" if st.inspection_available else "unavailable", "problems": st.problems}

    def _birth(self) -> bytes:
        s = self._ctx.session  # type: ignore[union-attr]
        return self._status_body(Birth, started_at=s.started_at, previous_session=s.previous_id,
                                 previous_last_seq=s.previous_last_seq,
                                 previous_last_result_seq=s.previous_last_result_seq, state=self._state.state,
                                 **self._health_fields())

    def _state_body(self) -> bytes:
        return self._status_body(HealthChange, type=self._state.state, **self._health_fields())

    # -- bus thread -----------------------------------------------------------------------------------------
    def _run(self) -> None:
        next_beat = time.monotonic() + self.heartbeat_s
        try:
            while not self._stop.wait(max(0.0, min(SUBSCRIPTION_POLL_S, next_beat - time.monotonic()))):
                self._welcome_new_subscribers()
                now = time.monotonic()
                if now >= next_beat:
                    self._heartbeat()
                    next_beat = now + self.heartbeat_s
        except Exception:  # noqa: BLE001 - the bus thread must report, not vanish
            log.exception("alarm bus thread failed")

    def _welcome_new_subscribers(self) -> None:
        """Read the subscriptions that arrived; if any covers the birth or state topic, send both again."""
        birth = status_topic(self.station, "birth")
        state = status_topic(self.station, self._state.state)
        welcome = False
        with self._pub_lock:
            pub = self._pub
            if pub is None:
                return
            while True:
                try:
                    msg = pub.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                if msg[:1] == b"\x01":  # subscribe (b"\x00": unsubscribe)
                    prefix = msg[1:].decode(errors="replace")
                    welcome |= birth.startswith(prefix) or state.startswith(prefix)
            if welcome:
                self.welcomes += 1
                self._send_locked(birth, self._birth())
                self._send_locked(state, self._state_body())

    def _heartbeat(self) -> None:
        try:
            health = self._ctx.health() if self._ctx is not None else {}
        except Exception:  # noqa: BLE001
            health = {"state": "unknown"}
        body = self._status_body(Heartbeat, health=health)
        with self._pub_lock:
            self._send_locked(status_topic(self.station, "heartbeat"), body)

    # -- marker thread --------------------------------------------------------------------------------------
    def _mark_loop(self) -> None:
        """Flush the published-alarm marks every MARK_PERIOD_S (``stop`` does the last one)."""
        while not self._stop.wait(MARK_PERIOD_S):
            self._flush_marks()

    def _flush_marks(self) -> None:
        with self._pub_lock:
            seqs, self._to_mark = self._to_mark, []
        if not seqs or self._ctx is None:
            return
        try:
            with self._ctx.transactions.begin() as db:
                db.execute(update(Alarm).where(Alarm.session_id == self.session_id, Alarm.seq.in_(seqs))
                           .values(state="published"))
        except Exception:  # noqa: BLE001 - state is informational; never lose the bus over it
            log.exception("cannot mark alarms published; retrying with the next batch")
            with self._pub_lock:
                self._to_mark[:0] = seqs
