"""Prometheus metrics of one daemon instance, served on a loopback port.

Why a registry per instance (not prometheus_client's global default): tests and the soak benchmark run several
daemons in one process, and a station's numbers must never mix with another's. Why loopback by default: the
endpoint has no authentication; expose it through the host's scraper or a reverse proxy, never to the line LAN.

Metric names (all prefixed ``rddn_``) are part of the operations contract documented in docs/operations.md.
"""
from __future__ import annotations

import logging
import queue
import socket
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable, Iterable, Iterator
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from pydantic import BaseModel, ConfigDict, Field, model_validator
from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, Info, generate_latest
from prometheus_client.exposition import make_wsgi_app

from inspector.security import check_exposure, reachable_from_network

if TYPE_CHECKING:
    from inspector.drift import DriftState

# Per-stage latencies span ~0.5 ms (publish) to seconds (CPU inference); buckets cover both ends.
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
HEALTH_STATES = ("starting", "healthy", "degraded", "stopping")
STAGES = ("ingest", "decode", "align", "detect", "db", "publish", "move", "total")


class MetricsConfig(BaseModel):
    """The ``metrics`` section of a station config. ``port: null`` disables the endpoint; 0 picks a free port."""

    model_config = ConfigDict(extra="forbid")

    port: int | None = Field(None, ge=0, le=65535)
    address: str = "127.0.0.1"
    allow_plaintext: bool = False  # the endpoint has no authentication: a non-loopback address needs this

    @model_validator(mode="after")
    def _exposure(self) -> "MetricsConfig":
        self.exposure_warnings()
        return self

    def exposure_warnings(self) -> list[str]:
        if self.port is None:
            return []
        warning = check_exposure("metrics.address", self.address, secured=False,
                                 allow_plaintext=self.allow_plaintext, allow_key="metrics.allow_plaintext",
                                 how_to_secure="Scrape it through a reverse proxy with TLS and authentication.")
        return [warning] if warning else []


METRICS_PATH = "/metrics"
SERVER_THREADS = 4  # requests handled at once; a scrape takes milliseconds
PENDING_CONNECTIONS = 16  # accepted connections waiting for a thread; beyond that new ones are closed at once
IDLE_TIMEOUT_S = 5.0  # a connection that sends nothing for this long is dropped (slow or idle clients)

_log = logging.getLogger("inspector.metrics")


def metrics_app(registry: CollectorRegistry) -> Callable[..., Iterable[bytes]]:
    """WSGI app answering ``GET /metrics`` (and HEAD) with the exposition; 404 for every other path."""
    exposition = make_wsgi_app(registry)

    def app(environ: dict[str, object], start_response: Callable[..., object]) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD")
        if environ.get("PATH_INFO") != METRICS_PATH:
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: this endpoint serves /metrics only\n"]
        if method not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")])
            return [b"method not allowed: GET /metrics\n"]
        body = exposition({**environ, "REQUEST_METHOD": "GET"}, start_response)
        return [] if method == "HEAD" else body

    return app


class _Handler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        _log.debug("metrics request " + format, *args)


class BoundedWSGIServer(WSGIServer):
    """A WSGI server with a fixed pool of request threads (the stdlib's threading server spends one thread
    per connection, without bound). The accepting thread queues a connection for the pool; when the queue is
    full the connection is closed at once (``rejected``), so a connection flood costs a bounded number of
    threads and file descriptors."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily, threads: int = SERVER_THREADS,
                 pending: int = PENDING_CONNECTIONS, idle_timeout_s: float = IDLE_TIMEOUT_S) -> None:
        self.address_family = family
        super().__init__(address, _Handler)
        self.idle_timeout_s = idle_timeout_s
        self.rejected = 0
        self._queue: queue.Queue[tuple[socket.socket, object] | None] = queue.Queue(pending)
        self._workers = [threading.Thread(target=self._work, name=f"metrics-http-{i}", daemon=True)
                         for i in range(threads)]
        for worker in self._workers:
            worker.start()

    def process_request(self, request: socket.socket, client_address: object) -> None:  # type: ignore[override]
        try:
            self._queue.put_nowait((request, client_address))
        except queue.Full:
            self.rejected += 1
            self.shutdown_request(request)

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            request, client_address = item
            try:
                request.settimeout(self.idle_timeout_s)  # every read: an idle connection cannot hold a thread
                self.finish_request(request, client_address)
            except OSError:  # timed out or reset by the client: nothing to answer
                pass
            except Exception:  # noqa: BLE001 - one bad request must not end a worker
                _log.exception("metrics request failed")
            finally:
                self.shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        for _ in self._workers:
            self._queue.put(None)
        for worker in self._workers:
            worker.join(self.idle_timeout_s + 1.0)


class MetricsServer:
    """A running exposition endpoint; ``port`` is the bound port (useful when 0 asked for a free one)."""

    def __init__(self, server: BoundedWSGIServer) -> None:
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                                       name="metrics-accept", daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5.0)


class InspectorMetrics:
    """Every number the line's monitoring needs from one station, in its own registry."""

    def __init__(self, station: str, registry: CollectorRegistry | None = None) -> None:
        self.station = station
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.info = Info("rddn_station", "Station this daemon inspects", registry=r)
        self.info.info({"station": station})
        self.frames = Counter(
            "rddn_frames", "Frames finished, by camera and final status", ["camera", "status"], registry=r
        )
        self.stage_seconds = Histogram(
            "rddn_stage_seconds", "Per-stage latency of a frame", ["stage"], buckets=STAGE_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("rddn_queue_depth", "Frames waiting to be processed", registry=r)
        self.alarms = Counter("rddn_alarms", "Alarms published, by severity", ["severity"], registry=r)
        self.backend_errors = Counter(
            "rddn_backend_errors", "Detector failures, by kind (exception, timeout)", ["kind"], registry=r
        )
        self.backend_restarts = Counter("rddn_backend_restarts", "Detector backend restarts", registry=r)
        self.template_misses = Counter(
            "rddn_template_misses", "Frames without an active template", ["camera", "position"], registry=r
        )
        position = ["camera", "position"]
        self.template_version = Gauge(
            "rddn_template_version", "Version of the template the latest frame was inspected against", position,
            registry=r)
        self.template_residual = Gauge(
            "rddn_template_residual", "Rolling median alignment residual (grey levels) of the active template",
            position, registry=r)
        self.template_residual_baseline = Gauge(
            "rddn_template_residual_baseline", "Median alignment residual of the active template's first frames",
            position, registry=r)
        self.template_drifted = Gauge(
            "rddn_template_drifted", "1 when the position's template has drifted (templates.drift rule)", position,
            registry=r)
        self._position_gauges: dict[tuple[str, str], tuple[Gauge, ...]] = {}
        self.db_retries = Counter("rddn_db_retries", "Database operations retried after an error", registry=r)
        self.last_heartbeat = Gauge(
            "rddn_last_heartbeat_timestamp_seconds", "Unix time of the last bus heartbeat", registry=r
        )
        self.observers_alive = Gauge("rddn_observers_alive", "Drop-folder observers alive", registry=r)
        self.health = Enum("rddn_health", "Station health state", states=list(HEALTH_STATES), registry=r)
        self.health.state("starting")

    # --- hooks the daemon calls -------------------------------------------------------------------------------
    def observe_stage(self, stage: str, seconds: float) -> None:
        """Signature matches the daemon's per-stage timing hook ``(stage, seconds)``."""
        self.stage_seconds.labels(stage=stage).observe(seconds)

    @contextmanager
    def time_stage(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.observe_stage(stage, time.perf_counter() - start)

    def frame_done(self, camera: str, status: str) -> None:
        self.frames.labels(camera=camera, status=status).inc()

    def alarm_published(self, severity: str) -> None:
        self.alarms.labels(severity=severity).inc()

    def backend_error(self, kind: str) -> None:
        self.backend_errors.labels(kind=kind).inc()

    def template_miss(self, camera: str, position: str) -> None:
        self.template_misses.labels(camera=camera, position=position).inc()

    def template_drift(self, state: "DriftState") -> None:
        """Signature matches ``DriftTracker``'s update hook; runs once per frame, so the labelled children are
        looked up once per position (``labels()`` is most of the cost otherwise)."""
        key = (state.camera, state.position)
        children = self._position_gauges.get(key)
        if children is None:
            labels = {"camera": state.camera, "position": state.position}
            children = self._position_gauges[key] = tuple(g.labels(**labels) for g in (
                self.template_residual, self.template_residual_baseline, self.template_drifted,
                self.template_version))
        recent, baseline, drifted, version = children
        if state.recent is not None:
            recent.set(state.recent)
        if state.baseline is not None:
            baseline.set(state.baseline)
        drifted.set(1.0 if state.drifted else 0.0)
        if state.version is not None:
            version.set(state.version)

    def heartbeat(self, when: float | None = None) -> None:
        self.last_heartbeat.set(time.time() if when is None else when)

    def set_health(self, state: str) -> None:
        if state not in HEALTH_STATES:
            raise ValueError(f"unknown health state {state!r}; expected one of {HEALTH_STATES}")
        self.health.state(state)

    def set_queue_depth(self, depth: int) -> None:
        self.queue_depth.set(depth)

    # --- exposition -------------------------------------------------------------------------------------------
    def render(self) -> bytes:
        """The text exposition format, as a scrape would see it."""
        return generate_latest(self.registry)

    def serve(self, port: int, addr: str = "127.0.0.1", allow_non_loopback: bool = False,
              idle_timeout_s: float = IDLE_TIMEOUT_S) -> MetricsServer:
        """Start the HTTP endpoint (``GET /metrics`` only, :data:`SERVER_THREADS` request threads, idle
        connections dropped after ``idle_timeout_s``); ``port=0`` binds a free port (see ``MetricsServer.port``)."""
        if not allow_non_loopback and reachable_from_network(addr):
            raise ValueError(
                f"metrics address {addr!r} is not loopback; the endpoint is unauthenticated "
                "(metrics.allow_plaintext: true only behind a firewall/proxy)"
            )
        if not 0 <= port <= 65535:
            raise ValueError(f"metrics port {port} out of range 0..65535")
        family, host = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0::4]
        server = BoundedWSGIServer((host[0], port), family, idle_timeout_s=idle_timeout_s)
        server.set_app(metrics_app(self.registry))
        return MetricsServer(server)


def sample_value(metrics: InspectorMetrics, name: str, labels: dict[str, str] | None = None) -> float | None:
    """Read one sample back (tests, STATUS= line); None when the series does not exist yet."""
    return metrics.registry.get_sample_value(name, labels or {})
