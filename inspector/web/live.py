"""The live view's feed: "results up to frame id N exist" notices, fanned out to the open browser streams (SSE).

Two sources produce the same notice, so the page behaves the same on a station and on a central database:

- ``BusSource`` subscribes to this station's ZeroMQ bus (``result.<station>.*`` per-frame verdicts and
  ``alarm.<station>.*``), with the bus's CURVE keys when it is secured: a result shows within milliseconds;
- ``PollSource`` reads ``max(frames.id)`` every ``poll_interval_s`` (one primary-key lookup): the only source
  for a central database without a bus, and the safety net behind the bus (PUB/SUB drops under load).

A notice carries no row data: the browser asks the list endpoint for rows newer than its top row under its own
filters, so a missed or duplicated notice changes nothing but timing.
"""
from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path
from typing import Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from inspector.db.models import Frame

log = logging.getLogger("inspector.web.live")
QUEUE_SIZE = 64


class LiveHub:
    """Thread-safe fan-out: sources call :meth:`notify` from their threads; each stream awaits its queue."""

    def __init__(self, max_clients: int) -> None:
        self.max_clients = max_clients
        self._queues: set[asyncio.Queue] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self.latest_id = 0

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def subscribe(self) -> asyncio.Queue | None:
        """A queue for one stream, or None when ``max_clients`` streams are open already."""
        with self._lock:
            if len(self._queues) >= self.max_clients:
                return None
            queue: asyncio.Queue = asyncio.Queue(QUEUE_SIZE)
            self._queues.add(queue)
            return queue

    def unsubscribe(self, queue: asyncio.Queue) -> None:
        with self._lock:
            self._queues.discard(queue)

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._queues)

    def notify(self, frame_id: int, source: str) -> None:
        with self._lock:
            if frame_id <= self.latest_id:
                return  # the other source told already
            self.latest_id = frame_id
            queues = list(self._queues)
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        notice = {"frame_id": frame_id, "source": source}
        for queue in queues:
            loop.call_soon_threadsafe(_offer, queue, notice)


def _offer(queue: asyncio.Queue, notice: dict) -> None:
    """Keep the newest notices for a slow browser; an older notice is implied by a newer one."""
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(notice)


class _Source(threading.Thread):
    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self.stop_event = threading.Event()

    def stop(self, timeout: float = 3.0) -> None:
        self.stop_event.set()
        if self.is_alive():
            self.join(timeout)


class PollSource(_Source):
    def __init__(self, factory: sessionmaker[Session], hub: LiveHub, interval_s: float) -> None:
        super().__init__("web-live-poll")
        self.factory, self.hub, self.interval_s = factory, hub, interval_s

    def newest(self) -> int:
        with self.factory() as db:
            return int(db.scalar(select(func.max(Frame.id))) or 0)

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self.hub.notify(self.newest(), "poll")
            except Exception:  # noqa: BLE001 - a database outage must not end the live view; next poll retries
                log.warning("live view: cannot read the newest frame id", exc_info=True)
            self.stop_event.wait(self.interval_s)


class BusSource(_Source):
    """SUB on the daemon's PUB endpoint; ``secure`` configures CURVE client keys before connecting."""

    def __init__(self, endpoint: str, station: str, hub: LiveHub,
                 secure: Callable[[object], None] | None = None) -> None:
        super().__init__("web-live-bus")
        self.endpoint, self.station, self.hub, self.secure = endpoint, station, hub, secure
        self.received = 0

    def run(self) -> None:
        import zmq

        context = zmq.Context.instance()
        sock = context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 1000)
        if self.secure is not None:
            self.secure(sock)
        for prefix in ("result", "alarm"):
            sock.setsockopt(zmq.SUBSCRIBE, f"{prefix}.{self.station}.".encode())
        try:
            sock.connect(self.endpoint)
        except zmq.ZMQError as exc:
            log.warning("live view: cannot subscribe to the bus; results show through the database poll",
                        extra={"fields": {"endpoint": self.endpoint, "error": str(exc)}})
            sock.close()
            return
        try:
            while not self.stop_event.is_set():
                if not sock.poll(250):
                    continue
                parts = sock.recv_multipart()
                frame_id = _frame_id(parts[-1])
                if frame_id is not None:
                    self.received += 1
                    self.hub.notify(frame_id, "bus")
        finally:
            sock.close()


def _frame_id(body: bytes) -> int | None:
    try:
        value = json.loads(body).get("frame_id")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, int) else None


def curve_client(server_key: Path | None) -> Callable[[object], None] | None:
    """The CURVE client setup for a secured bus (on the daemon's host its key file holds the public half)."""
    if server_key is None:
        return None
    from inspector.security import secure_client

    return lambda sock: secure_client(sock, server_key)  # type: ignore[arg-type]
