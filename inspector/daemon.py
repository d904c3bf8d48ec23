"""The daemon: wires config, database, templates, backend, pipeline, watchers and the alarm bus together.

Explicit ``start()``/``stop()``/``reload()``/``health()`` and no module-level state, so the service layer
(systemd notify, metrics, fault tests) can drive it, and tests can run several in one process. Threads:
one worker (frames are processed one at a time: a gap-free alarm sequence and a bounded memory footprint),
one observer per camera, the bus thread, and a supervisor (periodic reconcile, observer liveness, retention).
"""
from __future__ import annotations

import hashlib
import json
import logging
import signal
import threading
import time
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path

from sqlalchemy import update
from sqlalchemy.exc import SQLAlchemyError

from inspector.backends import load_backend
from inspector.backends.base import DetectorBackend
from inspector.bus import AlarmBus, AlarmSequencer, open_session
from inspector.config import ConfigError, StationConfig, load_station_config
from inspector.db import BusSession, make_engine, make_session_factory, upgrade_database
from inspector.db.records import ensure_station, register_model
from inspector.ingest import FrameJob, FrameQueue
from inspector.logging_json import log_fields
from inspector.pipeline import FrameOutcome, Pipeline
from inspector.reconcile import reconcile
from inspector.storage import purge_older_than
from inspector.templates import TemplateStore
from inspector.watcher import CameraWatcher

log = logging.getLogger("inspector.daemon")
RETENTION_PERIOD_S = 3600.0


class HealthState(str, Enum):
    STARTING = "starting"
    HEALTHY = "healthy"
    DEGRADED = "degraded"  # running, but something needs a person (observer restarted, DB errors, ...)
    STOPPING = "stopping"
    STOPPED = "stopped"


def backend_identity(cfg: StationConfig, backend: DetectorBackend) -> tuple[str, str]:
    """(sha256, precision) for the models table; the difference detector is identified by its settings."""
    sha = getattr(backend, "model_sha256", None)
    if not sha:
        sha = hashlib.sha256(json.dumps({"backend": cfg.detector.backend, **cfg.detector.options},
                                        sort_keys=True, default=str).encode()).hexdigest()
    return sha, str(getattr(backend, "precision", "n/a"))


class Daemon:
    def __init__(self, cfg: StationConfig, config_path: Path | None = None,
                 backend: DetectorBackend | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self._given_backend = backend
        self.state = HealthState.STOPPED
        self.queue = FrameQueue(cfg.queue_size)
        self.watchers: dict[str, CameraWatcher] = {}
        self.errors: dict[str, int] = {"db": 0, "worker": 0, "reload": 0, "observer_restarts": 0}
        self.last_frame_at: datetime | None = None
        self.in_flight: FrameJob | None = None
        self._stop_worker = threading.Event()
        self._stop_supervisor = threading.Event()
        self._reload_requested = threading.Event()
        self._threads: list[threading.Thread] = []
        self.bus: AlarmBus | None = None
        self.pipeline: Pipeline | None = None

    # -- start ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Migrate the DB, register station/cameras/model, open a bus session (birth), start the worker and
        watchers, then reconcile the drop folders (frames that arrived while we were down)."""
        self.state = HealthState.STARTING
        cfg = self.cfg
        for name in ("processed", "quarantine", "annotated", "templates"):
            cfg.dir_for(name).mkdir(parents=True, exist_ok=True)  # type: ignore[arg-type]
        self.engine = make_engine(cfg.db_url)
        upgrade_database(self.engine)
        self.factory = make_session_factory(self.engine)
        self.camera_ids = ensure_station(self.factory, cfg)
        self.templates = TemplateStore(cfg, self.factory, self.camera_ids)
        self.backend = self._given_backend or load_backend(cfg.detector.backend, cfg.detector.artifact,
                                                           **cfg.detector.options)
        self.model_id = self._register_backend(self.backend)
        session_id, prev_id, prev_seq = open_session(self.factory, cfg.station)
        self.sequencer = AlarmSequencer(session_id)
        self.bus = AlarmBus(cfg.station, cfg.bus.publish, cfg.bus.replay, self.factory, session_id,
                            cfg.bus.heartbeat_s, (prev_id, prev_seq), health=self.health_summary)
        self.bus.start()
        self.pipeline = Pipeline(cfg, self.factory, self.camera_ids, self.templates, self.backend, self.model_id,
                                 self.sequencer, self.bus)
        self.pipeline.frame_hooks.append(self._on_frame)
        self._stop_worker.clear()
        self._stop_supervisor.clear()
        self._threads = [threading.Thread(target=self._worker, name="frame-worker", daemon=True),
                         threading.Thread(target=self._supervisor, name="supervisor", daemon=True)]
        self._threads[0].start()
        self._start_watchers()
        self.reconcile_all(min_age_s=0.0)
        self._threads[1].start()
        self.state = HealthState.HEALTHY
        log.info("inspection started", **log_fields(station=cfg.station, session=session_id,
                                                    backend=cfg.detector.backend, publish=self.bus.bound_publish,
                                                    replay=self.bus.bound_replay, cameras=list(self.camera_ids)))

    def _register_backend(self, backend: DetectorBackend) -> int:
        sha, precision = backend_identity(self.cfg, backend)
        return register_model(self.factory, sha, self.cfg.detector.backend, precision,
                              str(self.cfg.detector.artifact) if self.cfg.detector.artifact else None,
                              list(backend.class_names))

    def _start_watchers(self) -> None:
        for cam in self.cfg.cameras:
            watcher = CameraWatcher(cam, self.offer)
            watcher.start()
            self.watchers[cam.id] = watcher

    def _stop_watchers(self) -> None:
        for watcher in self.watchers.values():
            watcher.stop()
        self.watchers = {}

    # -- work ----------------------------------------------------------------------------------------------
    def offer(self, camera: str, path: Path, source: str) -> bool:
        return self.queue.offer(camera, Path(path), source)

    def reconcile_all(self, min_age_s: float) -> int:
        return sum(reconcile(cam, self.offer, min_age_s) for cam in self.cfg.cameras)

    def _on_frame(self, outcome: FrameOutcome) -> None:
        self.last_frame_at = datetime.now(timezone.utc)

    def _worker(self) -> None:
        while not self._stop_worker.is_set():
            job = self.queue.get(timeout=0.1)
            if job is None:
                continue
            self.in_flight = job
            try:
                assert self.pipeline is not None
                self.pipeline.process(job)
            except SQLAlchemyError:
                # The DB is unavailable: leave the file where it is (reconcile retries it) and back off.
                self.errors["db"] += 1
                self.state = HealthState.DEGRADED
                log.exception("database error; frame left in drop folder for retry",
                              **log_fields(camera=job.camera, frame=job.path.name))
                self._stop_worker.wait(1.0)
            except Exception:  # noqa: BLE001 - the worker must outlive any single frame
                self.errors["worker"] += 1
                log.exception("frame worker error", **log_fields(camera=job.camera, frame=job.path.name))
            finally:
                self.queue.done(job)
                self.in_flight = None

    def _supervisor(self) -> None:
        next_reconcile = time.monotonic() + self.cfg.reconcile_interval_s
        next_retention = time.monotonic()
        while not self._stop_supervisor.wait(0.5):
            try:
                if self._reload_requested.is_set():
                    self._reload_requested.clear()
                    self.reload()
                for watcher in list(self.watchers.values()):
                    if watcher.ensure_alive():
                        self.errors["observer_restarts"] += 1
                        self.state = HealthState.DEGRADED
                now = time.monotonic()
                if now >= next_reconcile:
                    stable = max([c.stable_s for c in self.cfg.cameras] + [0.5])
                    queued = self.reconcile_all(min_age_s=2 * stable)
                    if queued:
                        log.warning("reconcile found frames without events", **log_fields(count=queued))
                    next_reconcile = now + self.cfg.reconcile_interval_s
                if now >= next_retention:
                    self.apply_retention()
                    next_retention = now + RETENTION_PERIOD_S
            except Exception:  # noqa: BLE001
                log.exception("supervisor iteration failed")

    def apply_retention(self) -> int:
        r = self.cfg.retention
        return (purge_older_than(self.cfg.dir_for("processed"), r.processed_days)
                + purge_older_than(self.cfg.dir_for("quarantine"), r.quarantine_days)
                + purge_older_than(self.cfg.dir_for("annotated"), r.annotated_days))

    # -- control -------------------------------------------------------------------------------------------
    def request_reload(self) -> None:
        """Signal-safe: the supervisor thread does the actual reload."""
        self._reload_requested.set()

    def reload(self) -> bool:
        """Re-read the config file (if any) and the templates. Invalid config: logged, old one kept.
        Station id, database and bus endpoints need a restart and are not changed here."""
        self.templates.invalidate()
        if self.config_path is None:
            return True
        try:
            new = load_station_config(self.config_path)
        except ConfigError as exc:
            self.errors["reload"] += 1
            log.error("reload rejected, keeping the running configuration", **log_fields(error=str(exc)))
            return False
        fixed = ("station", "database_url", "bus", "state_dir")
        if any(getattr(new, k) != getattr(self.cfg, k) for k in fixed):
            log.warning("reload: station/database/bus/state_dir changes need a restart; kept the running ones")
            new = new.model_copy(update={k: getattr(self.cfg, k) for k in fixed})
        if new.detector != self.cfg.detector and self._given_backend is None:
            backend = load_backend(new.detector.backend, new.detector.artifact, **new.detector.options)
            old, self.backend = self.backend, backend
            self.cfg = new
            self.model_id = self._register_backend(backend)
            assert self.pipeline is not None
            self.pipeline.backend, self.pipeline.model_id = backend, self.model_id
            old.close()
        cameras_changed = new.cameras != self.cfg.cameras
        self.cfg = new
        self.camera_ids.update(ensure_station(self.factory, new))
        self.templates.cfg = new
        assert self.pipeline is not None
        self.pipeline.configure(new)
        if cameras_changed:
            self._stop_watchers()
            self._start_watchers()
            self.reconcile_all(min_age_s=0.0)
        log.info("configuration reloaded", **log_fields(config=str(self.config_path)))
        return True

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking frames, finish the one in flight (its commit included), send death, close."""
        if self.state == HealthState.STOPPED:
            return
        self.state = HealthState.STOPPING
        self._stop_watchers()
        self._stop_supervisor.set()
        self._stop_worker.set()
        for thread in self._threads:
            thread.join(timeout)
        if self.bus is not None:
            last = self.bus.published_seq
            self.bus.stop()
            try:
                with self.factory.begin() as db:
                    db.execute(update(BusSession).where(BusSession.id == self.sequencer.session_id)
                               .values(stopped_at=datetime.now(timezone.utc)))
            except SQLAlchemyError:
                log.exception("cannot record session stop")
            log.info("inspection stopped", **log_fields(station=self.cfg.station, session=self.sequencer.session_id,
                                                        last_seq=last))
        self.backend.close()
        self.engine.dispose()
        self.state = HealthState.STOPPED

    # -- observation ---------------------------------------------------------------------------------------
    def wait_idle(self, timeout: float = 10.0) -> bool:
        """True once nothing is queued or in flight (tests, benchmark, demo shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.queue) == 0 and self.in_flight is None and not any(
                    w._pending for w in self.watchers.values()):
                return True
            time.sleep(0.01)
        return False

    def health_summary(self) -> dict[str, object]:
        return {"state": self.state.value, "queue": len(self.queue),
                "watchers_alive": all(w.is_alive() for w in self.watchers.values())}

    def health(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "station": self.cfg.station,
            "session": getattr(getattr(self, "sequencer", None), "session_id", None),
            "queue": len(self.queue),
            "queue_dropped_full": self.queue.dropped_full,
            "in_flight": str(self.in_flight.path) if self.in_flight else None,
            "watchers": {cid: {"alive": w.is_alive(), "handler_errors": w.handler_errors, "restarts": w.restarts}
                         for cid, w in self.watchers.items()},
            "bus_alive": self.bus.is_alive() if self.bus else False,
            "worker_alive": bool(self._threads) and self._threads[0].is_alive(),
            "last_frame_at": self.last_frame_at.isoformat() if self.last_frame_at else None,
            "counts": dict(self.pipeline.counts) if self.pipeline else {},
            "errors": dict(self.errors),
        }

    def run_forever(self) -> int:
        """``inspector run``: SIGTERM/SIGINT stop cleanly (exit 0), SIGHUP reloads config and templates."""
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        signal.signal(signal.SIGHUP, lambda *_: self.request_reload())
        self.start()
        try:
            while not stop.wait(0.5):
                pass
        finally:
            self.stop()
        return 0
