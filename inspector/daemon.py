"""The daemon: wires config, database, templates, backend, pipeline, watchers and the alarm bus together.

Explicit ``start()``/``stop()``/``reload()``/``health()`` and no module-level state, so the service layer
(systemd notify, metrics, fault tests) can drive it, and tests can run several in one process. Threads:
``workers`` analysis threads (decode/align/detect: OpenCV and ONNX Runtime release the GIL) feeding one
commit thread (DB, publish, move: one at a time, in arrival order, so the alarm sequence is gap-free and memory
bounded; each committed result goes to every output through one ``OutputDispatcher``), one observer per camera,
the outputs' own threads (bus heartbeats, replay), and a supervisor (periodic reconcile, observer liveness,
retention).
"""
from __future__ import annotations

import hashlib
import json
import logging
import signal
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Callable, TypeVar

from sqlalchemy import update
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from inspector.backends import load_backend
from inspector.backends.base import DetectorBackend
from inspector.config import ConfigError, DetectorConfig, StationConfig, load_station_config
from inspector.db import BusSession, make_engine, make_session_factory, upgrade_database
from inspector.db.writer import DbWriter
from inspector.db.records import ensure_station, register_model
from inspector.drift import DriftTracker
from inspector.ingest import FrameJob, FrameQueue
from inspector.logging_json import log_fields
from inspector.metrics import InspectorMetrics, MetricsServer
from inspector.outputs import OutputContext, OutputDispatcher, StationState, build_outputs
from inspector.outputs.result import ModelRef
from inspector.outputs.session import SessionSequencer, open_session
from inspector.outputs.zeromq import ZeroMQOutput
from inspector.pipeline import FrameOutcome, Pipeline
from inspector.reconcile import scan_drop_folder
from inspector.resources import (ResourceExhausted, describe, ensure_fd_headroom, fd_pressure,
                                 is_resource_exhaustion)
from inspector.sdnotify import PipelineSnapshot, ProgressMonitor, SdNotifier, WatchdogPinger, watchdog_interval
from inspector.storage import purge_older_than
from inspector.supervisor import (Backoff, DetectorTimeout, InspectionUnavailable, RestartBudget, StationHealth,
                                  SupervisedDetector)
from inspector.templates import TemplateStore
from inspector.watcher import CameraWatcher

log = logging.getLogger("inspector.daemon")
T = TypeVar("T")
RETENTION_PERIOD_S = 3600.0


class HealthState(str, Enum):
    STARTING = "starting"
    HEALTHY = "healthy"
    DEGRADED = "degraded"  # running, but something needs a person (observer restarted, DB errors, ...)
    STOPPING = "stopping"
    STOPPED = "stopped"


def model_verification(det: DetectorConfig) -> str:
    """How the model about to run is checked (the ``models.verification`` column)."""
    if det.backend == "difference":
        return "config"
    if det.signing_public_key is not None:
        return "signature"
    return "sha256" if det.verifies_hash else "unverified"


def load_verified_backend(det: DetectorConfig) -> DetectorBackend:
    """Load the configured backend after checking its artifact: the Ed25519 signature when
    ``detector.signing_public_key`` is set (a tampered or unsigned artifact is refused), else the backend's
    own sha256 check, unless ``verify_hash: false`` (loaded unchecked: said in the log at every load)."""
    if det.signing_public_key is not None:
        from engines.signing import verify_artifact

        assert det.artifact is not None
        signed = verify_artifact(det.artifact, det.signing_public_key)
        log.info("artifact signature verified", **log_fields(artifact=str(det.artifact), key_id=signed.key_id,
                                                             files=len(signed.files)))
    elif model_verification(det) == "unverified":
        log.warning("model loaded WITHOUT verification (detector.options.verify_hash: false): its hash is not "
                    "checked and its results are recorded as from an unverified model",
                    **log_fields(artifact=str(det.artifact)))
    return load_backend(det.backend, det.artifact, **det.options)


def backend_identity(cfg: StationConfig, backend: DetectorBackend) -> tuple[str, str]:
    """(sha256, precision) for the models table, from what is deployed (not from the backend object, which
    may be wrapped by the supervisor): artifact metadata for onnxruntime/openvino/tensorrt, the checkpoint file's hash
    for torch, the settings for the difference detector."""
    det = cfg.detector
    if det.backend in ("onnxruntime", "openvino", "tensorrt") and det.artifact is not None:
        from engines.artifact import ArtifactMetadata

        meta = ArtifactMetadata.load(det.artifact)
        return meta.model_sha256, meta.precision
    if det.backend == "torch" and det.artifact is not None and Path(det.artifact).is_file():
        from engines.artifact import sha256_file

        return sha256_file(Path(det.artifact)), "fp32"
    sha = getattr(backend, "model_sha256", None)
    if not sha:
        sha = hashlib.sha256(json.dumps({"backend": det.backend, **det.options},
                                        sort_keys=True, default=str).encode()).hexdigest()
    return sha, str(getattr(backend, "precision", "n/a"))


class Daemon:
    def __init__(self, cfg: StationConfig, config_path: Path | None = None,
                 backend: DetectorBackend | None = None,
                 backend_factory: Callable[[], DetectorBackend] | None = None) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self._given_backend = backend
        self._backend_factory = backend_factory  # tests: a fresh backend per (re)start of the supervised detector
        # Service layer: health of the station (bus/metrics/systemd), Prometheus numbers, systemd notify.
        self.station_health = StationHealth()
        self.metrics = InspectorMetrics(cfg.station)
        self.metrics_server: MetricsServer | None = None
        self.notifier = SdNotifier()
        self.progress = 0  # frames finished + DB retries: what the systemd watchdog counts as "not wedged"
        self._db_backoff = Backoff(cfg.supervision.db_retry_initial_s, cfg.supervision.db_retry_max_s)
        self._start_aborted = threading.Event()  # SIGTERM while start() waits for the database
        self.state = HealthState.STOPPED
        self.queue = FrameQueue(cfg.queue_size)
        self.watchers: dict[str, CameraWatcher] = {}
        self.errors: dict[str, int] = {"db": 0, "worker": 0, "reload": 0, "observer_restarts": 0, "resources": 0}
        self.last_frame_at: datetime | None = None
        self.in_flight: FrameJob | None = None
        self._stop_worker = threading.Event()
        self._stop_supervisor = threading.Event()
        self._reload_requested = threading.Event()
        self._threads: list[threading.Thread] = []
        self.outputs: OutputDispatcher | None = None
        self.pipeline: Pipeline | None = None

    # -- start ---------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Migrate the DB, register station/cameras/model, open a bus session (birth), start the worker and
        watchers, then reconcile the drop folders (frames that arrived while we were down). A failure on the way
        releases what was already opened and re-raises (the message names what failed)."""
        try:
            self._start()
        except BaseException:
            self._abort_start()
            raise

    def _abort_start(self) -> None:
        self._stop_watchers()
        self._stop_supervisor.set()
        self._stop_worker.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(5.0)
        for name in ("outputs", "backend"):
            part = getattr(self, name, None)
            try:
                if part is not None:
                    part.stop() if name == "outputs" else part.close()
            except Exception:  # noqa: BLE001 - best effort: the original error is what matters
                log.exception("cleanup after failed start", **log_fields(part=name))
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        if getattr(self, "writer", None) is not None:
            self.writer.close()
        if getattr(self, "engine", None) is not None:
            self.engine.dispose()
        self.state = HealthState.STOPPED

    def _start(self) -> None:
        self.state = HealthState.STARTING
        cfg = self.cfg
        for warning in cfg.exposure_warnings():  # allowed by the config, said at every start
            log.warning("listener reachable from the network without authentication", **log_fields(warning=warning))
        fd_limit, fd_warnings = ensure_fd_headroom(cfg)  # raises when the limit cannot hold the connection caps
        for warning in fd_warnings:
            log.warning("file-descriptor limit", **log_fields(warning=warning, limit=fd_limit))
        for name in ("processed", "quarantine", "annotated", "templates"):
            cfg.dir_for(name).mkdir(parents=True, exist_ok=True)  # type: ignore[arg-type]
        self.engine = make_engine(cfg.db_url)
        self.factory = make_session_factory(self.engine)  # reads
        self.writer = DbWriter(self.engine)  # every write from here on (docs/operations.md: one writer)
        self.camera_ids = self._wait_for_database(
            lambda: (upgrade_database(self.engine), ensure_station(self.writer, cfg))[1])
        self.templates = TemplateStore(cfg, self.factory, self.camera_ids, recheck_s=cfg.templates.recheck_s)
        self.drift = DriftTracker(cfg.templates.drift, self.factory, self.camera_ids,
                                  on_update=self.metrics.template_drift, writer=self.writer)
        self.notifier.extend_timeout(cfg.supervision.load_timeout_s)  # a TensorRT engine build may take minutes
        self.backend = self._supervised_backend(cfg)
        self.model = self._wait_for_database(lambda: self._register_backend(self.backend))
        session = self._wait_for_database(lambda: open_session(self.writer, cfg.station))
        self.sequencer = SessionSequencer(session.id)
        self.outputs = build_outputs(cfg)
        self.outputs.start(OutputContext(cfg.station, session, self.factory, health=self.health_summary,
                                         last_seqs=self.sequencer.last, writer=self.writer))
        self.station_health.subscribe(self._on_health_change)
        self.pipeline = Pipeline(cfg, self.factory, self.writer, self.camera_ids, self.templates, self.backend, self.model,
                                 self.sequencer, self.outputs)
        self.pipeline.frame_hooks.append(self._on_frame)
        self.pipeline.stage_hooks.append(self.metrics.observe_stage)  # hooks get (stage, seconds)
        if cfg.metrics.port is not None and self.metrics_server is None:
            self.metrics_server = self.metrics.serve(cfg.metrics.port, cfg.metrics.address,
                                                     allow_non_loopback=cfg.metrics.allow_plaintext)
            log.info("metrics endpoint", **log_fields(url=f"http://{cfg.metrics.address}:{self.metrics_server.port}/metrics"))
        self._stop_worker.clear()
        self._stop_supervisor.clear()
        self._threads = [threading.Thread(target=self._worker, name="frame-worker", daemon=True),
                         threading.Thread(target=self._supervisor, name="supervisor", daemon=True)]
        self._threads[0].start()
        self._start_watchers()
        self.reconcile_all()
        self._threads[1].start()
        self.state = HealthState.HEALTHY
        self.metrics.set_health("healthy")
        log.info("inspection started", **log_fields(station=cfg.station, session=session.id,
                                                    backend=cfg.detector.backend, publish=self.bus.bound_publish,
                                                    replay=self.bus.bound_replay, cameras=list(self.camera_ids)))

    def _wait_for_database(self, step: Callable[[], T]) -> T:
        """Run a start-up database step (migrations, station rows, bus session), waiting with backoff while the
        database is unreachable or locked. At boot the PostgreSQL host may still be starting: exiting instead
        would burn systemd's restart budget (StartLimitBurst) and leave the unit failed. READY=1 is not sent
        until every step succeeded; SIGTERM ends the wait."""
        backoff = Backoff(self.cfg.supervision.db_retry_initial_s, self.cfg.supervision.db_retry_max_s)
        while True:
            try:
                return step()
            except OperationalError as exc:
                delay = backoff.next_delay()
                cause = getattr(exc, "orig", None) or exc
                log.error("database unavailable at start; waiting", **log_fields(
                    retry_in_s=delay, error=str(cause).strip().splitlines()[0] if str(cause).strip() else repr(cause)))
                self.notifier.status(f"starting: waiting for the database ({type(cause).__name__})")
                self.notifier.extend_timeout(delay + 60)
                if self._start_aborted.wait(delay):
                    raise RuntimeError("start aborted while waiting for the database") from exc

    def _supervised_backend(self, cfg: StationConfig) -> SupervisedDetector:
        """The detector behind a deadline and a restart budget (see ``inspector.supervisor``)."""
        sup = cfg.supervision
        factory = self._backend_factory
        if factory is None and self._given_backend is not None:
            given = self._given_backend
            factory = lambda: given  # noqa: E731 - a caller-owned instance: "restart" re-uses it
        if factory is None:
            det = cfg.detector
            factory = lambda: load_verified_backend(det)  # noqa: E731 - every (re)load checks the artifact again

        def on_event(event: str) -> None:
            if event == "restart":
                self.metrics.backend_restarts.inc()
            else:
                self.metrics.backend_error(event)

        def on_state(state: str, reason: str) -> None:
            if state == "degraded":
                self.station_health.degrade("detector", reason)
            else:
                self.station_health.recover("detector")

        return SupervisedDetector(factory, sup.detect_timeout_s, RestartBudget(sup.max_restarts, sup.restart_window_s),
                                  load_timeout_s=sup.load_timeout_s, max_consecutive_errors=sup.max_consecutive_errors,
                                  on_state=on_state, on_event=on_event, concurrency=cfg.workers)

    def _on_health_change(self, state: str, problems: dict[str, str]) -> None:
        """Tell the line at once through every output (bus: ``status.<station>.degraded`` / ``.healthy``)."""
        self.state = HealthState.DEGRADED if state == "degraded" else HealthState.HEALTHY
        self.metrics.set_health(state)
        log.warning("station health changed", **log_fields(state=state, problems=problems))
        self.notifier.status(self.status_line())
        if self.outputs is not None:
            self.outputs.state_changed(StationState(state, dict(problems)))

    @property
    def bus(self) -> ZeroMQOutput | None:
        """The ZeroMQ bus output (bound endpoints, counters), once started."""
        return self.outputs["zeromq"] if self.outputs is not None else None  # type: ignore[return-value]

    def status_line(self) -> str:
        """systemd STATUS=: what ``systemctl status`` shows."""
        counts = self.pipeline.counts if self.pipeline else {}
        text = (f"{self.state.value}: {sum(counts.values())} frames ({counts.get('defective', 0)} defective, "
                f"{counts.get('quarantined', 0)} quarantined), queue {len(self.queue)}")
        problems = self.station_health.problems
        return text + (f"; {'; '.join(f'{k}: {v}' for k, v in problems.items())}" if problems else "")

    def pipeline_snapshot(self) -> PipelineSnapshot:
        """What the systemd watchdog judges progress by (see ``sdnotify.ProgressMonitor``)."""
        workers_alive = bool(self._threads) and all(t.is_alive() for t in self._threads)
        observers_alive = all(w.is_alive() for w in self.watchers.values())
        return PipelineSnapshot(self.progress, len(self.queue), observers_alive and workers_alive,
                                busy=self.queue.busy() > 0)  # queued, analysing, committing or awaiting retry

    def _register_backend(self, backend: DetectorBackend) -> ModelRef:
        sha, precision = backend_identity(self.cfg, backend)
        model_id = register_model(self.writer, sha, self.cfg.detector.backend, precision,
                                  str(self.cfg.detector.artifact) if self.cfg.detector.artifact else None,
                                  list(backend.class_names), model_verification(self.cfg.detector))
        return ModelRef(id=model_id, sha256=sha, backend=self.cfg.detector.backend, precision=precision)

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
    def offer(self, job: FrameJob) -> bool:
        return self.queue.offer(job)

    def reconcile_all(self) -> int:
        """Let every watcher look at its whole folder (what arrived unseen); returns the entries found."""
        return sum(watcher.rescan() for watcher in list(self.watchers.values()))

    def _on_frame(self, outcome: FrameOutcome) -> None:
        self.last_frame_at = datetime.now(timezone.utc)
        self.progress += 1
        self.metrics.frame_done(outcome.job.camera, outcome.status)
        if outcome.severity and outcome.alarm_seq is not None:
            self.metrics.alarm_published(outcome.severity)
        if outcome.residual is not None and outcome.position is not None:
            self.drift.observe(outcome.job.camera, outcome.position, outcome.template_id, outcome.residual,
                               outcome.frame_id)
        if outcome.reason_kind == "no_template":
            position = outcome.job.path.name.split("_", 1)[0]
            self.metrics.template_miss(outcome.job.camera, position)

    def _worker(self) -> None:
        """Keep up to ``cfg.workers`` frames in analysis (decode/align/detect in a thread pool) and commit them
        in arrival order on this thread. On stop, the frames already in flight are finished and committed."""
        in_flight: deque[tuple[FrameJob, Future]] = deque()
        with ThreadPoolExecutor(self.cfg.workers, thread_name_prefix="analyze") as pool:
            while in_flight or not self._stop_worker.is_set():
                while len(in_flight) < self.cfg.workers and not self._stop_worker.is_set():
                    job = self.queue.get(timeout=0.0 if in_flight else 0.1)
                    if job is None:
                        break
                    assert self.pipeline is not None
                    in_flight.append((job, pool.submit(self.pipeline.analyze, job)))
                if in_flight:
                    job, future = in_flight.popleft()
                    self._commit_one(job, future)

    def _commit_one(self, job: FrameJob, future: Future) -> None:
        """Commit one analysed frame; a DB or detector outage keeps the frame and retries it with backoff. A
        frame refused by the database for its own data is quarantined by the pipeline and is no outage."""
        self.in_flight = job
        retry_after = 0.0
        not_ready = False
        try:
            assert self.pipeline is not None
            not_ready = self.pipeline.commit(future.result()).status == "not_ready"
            if self._db_backoff.attempts:
                self._db_backoff.reset()
                self.station_health.recover("database")
            self.station_health.recover("resources")
        except SQLAlchemyError as exc:
            if is_resource_exhaustion(exc):  # SQLite cannot open its files: descriptors, not the database
                retry_after = self._resource_failure(job, exc)
            else:
                retry_after = self._database_failure(job, exc)
        except (DetectorTimeout, InspectionUnavailable) as exc:
            retry_after = 1.0  # the supervisor already reported degraded; the frame waits for a detector
            log.error("detector unavailable; frame kept for retry", **log_fields(
                camera=job.camera, frame=job.path.name, error=str(exc)))
        except Exception as exc:  # noqa: BLE001 - the worker must outlive any single frame
            if isinstance(exc, ResourceExhausted) or is_resource_exhaustion(exc):
                retry_after = self._resource_failure(job, exc)
            else:
                self.errors["worker"] += 1
                log.exception("frame worker error", **log_fields(camera=job.camera, frame=job.path.name))
        finally:
            self.in_flight = None
            if not retry_after:
                self.queue.done(job)
        if not_ready and job.camera in self.watchers:  # still being written: the watcher tracks it again
            self.watchers[job.camera].not_ready(job)
        if retry_after:
            # The frame stays "busy" (pending) through the wait, so the watchdog sees work waiting, not idleness.
            self._stop_worker.wait(retry_after)
            self.queue.done(job)
            if not self._stop_worker.is_set():
                if not self.offer(replace(job, source="retry", offered_at=time.perf_counter())):
                    if job.camera in self.watchers:  # queue full: the watcher offers it again
                        self.watchers[job.camera].observe(job.path, "retry")

    def _database_failure(self, job: FrameJob, exc: SQLAlchemyError) -> float:
        """The DB is unavailable (locked by another writer, server down): the frame is fine and stays in the drop
        folder; retry it with exponential backoff, and say "degraded" meanwhile."""
        self.errors["db"] += 1
        self.progress += 1  # waiting on the DB is not a wedge: restarting us would not fix it
        self.metrics.db_retries.inc()
        retry_after = self._db_backoff.next_delay()
        cause = getattr(exc, "orig", None) or exc
        self.station_health.degrade("database", f"database unavailable ({type(cause).__name__})")
        log.error("database error; frame kept for retry", **log_fields(
            camera=job.camera, frame=job.path.name, retry_in_s=retry_after, error=str(exc).splitlines()[0]))
        return retry_after

    def _resource_failure(self, job: FrameJob, exc: BaseException) -> float:
        """Out of file descriptors (or another system resource): the frame is fine, keep it and retry; health
        says why (``resources``) until a frame commits again."""
        self.errors["resources"] += 1
        self.progress += 1  # waiting for descriptors is not a wedge of the pipeline
        reason = str(exc) if isinstance(exc, ResourceExhausted) else describe(exc)
        self.station_health.degrade("resources", reason)
        log.error("frame kept for retry: system resources exhausted", **log_fields(
            camera=job.camera, frame=job.path.name, error=reason, descriptors=fd_pressure(0.0)))
        return 1.0

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
                        watcher.rescan()  # frames written while the folder had no watch produced no events
                now = time.monotonic()
                if now >= next_reconcile:
                    self.reconcile_all()
                    next_reconcile = now + self.cfg.reconcile_interval_s
                if now >= next_retention:
                    self.apply_retention()
                    next_retention = now + RETENTION_PERIOD_S
                self.drift.persist()
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
        if self.bus is not None:
            self.bus.curve.reload()  # revoked/added CURVE client keys take effect without a restart
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
            backend = self._supervised_backend(new)
            old, self.backend = self.backend, backend
            self.cfg = new
            self.model = self._register_backend(backend)
            assert self.pipeline is not None
            self.pipeline.backend, self.pipeline.model = backend, self.model
            old.close()
        cameras_changed = new.cameras != self.cfg.cameras
        self.cfg = new
        self.camera_ids.update(ensure_station(self.writer, new))
        self.templates.cfg = new
        self.templates.recheck_s = new.templates.recheck_s
        self.drift.cfg = new.templates.drift
        assert self.pipeline is not None
        self.pipeline.configure(new)
        if cameras_changed:
            self._stop_watchers()
            self._start_watchers()
            self.reconcile_all()
        log.info("configuration reloaded", **log_fields(config=str(self.config_path)))
        return True

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking frames, finish the one in flight (its commit included), send death, close."""
        if self.state == HealthState.STOPPED:
            return
        self.state = HealthState.STOPPING
        self._stop_supervisor.set()
        for thread in self._threads:
            if thread.name == "supervisor":  # a reload in progress finishes first: it may be swapping the watchers
                thread.join(timeout)
        self._stop_watchers()
        self._stop_worker.set()
        for thread in self._threads:
            thread.join(timeout)
        if self.outputs is not None:
            last = self.sequencer.last()
            self.outputs.stop()
            try:
                with self.writer.begin() as db:
                    db.execute(update(BusSession).where(BusSession.id == self.sequencer.session_id)
                               .values(stopped_at=datetime.now(timezone.utc)))
            except SQLAlchemyError:
                log.exception("cannot record session stop")
            log.info("inspection stopped", **log_fields(station=self.cfg.station, session=self.sequencer.session_id,
                                                        last_seq=last[0], last_result_seq=last[1]))
        try:
            self.drift.persist(force=True)
        except SQLAlchemyError:
            log.exception("cannot record the template drift state")
        self.backend.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        self.writer.close()
        self.engine.dispose()
        self.state = HealthState.STOPPED

    # -- observation ---------------------------------------------------------------------------------------
    def wait_idle(self, timeout: float = 10.0) -> bool:
        """True once nothing is queued or in flight (tests, benchmark, demo shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.queue.busy() == 0 and not any(w.pending_count() for w in self.watchers.values()):
                return True
            time.sleep(0.01)
        return False

    def drain(self, timeout: float = 30.0) -> bool:
        """Process everything now in the drop folders (events still in flight included) and wait for it: for
        a shutdown after a known last write (demo, benchmark). True when the folders are empty and all done."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.wait_idle(max(0.0, deadline - time.monotonic())) and not any(
                    scan_drop_folder(cam) for cam in self.cfg.cameras):
                return True
            self.reconcile_all()
            time.sleep(0.05)
        return False

    def health_summary(self) -> dict[str, object]:
        """Rides on every bus heartbeat (so it also stamps the heartbeat metric and the queue gauge)."""
        self.metrics.heartbeat()
        self.metrics.set_queue_depth(len(self.queue))
        self.metrics.observers_alive.set(sum(w.is_alive() for w in self.watchers.values()))
        return {"state": self.state.value, "queue": len(self.queue),
                "watchers_alive": all(w.is_alive() for w in self.watchers.values()),
                "problems": self.station_health.problems}

    def health(self) -> dict[str, object]:
        return {
            "state": self.state.value,
            "station": self.cfg.station,
            "session": getattr(getattr(self, "sequencer", None), "session_id", None),
            "queue": len(self.queue),
            "busy": self.queue.busy(),
            "queue_dropped_full": self.queue.dropped_full,
            "in_flight": str(self.in_flight.path) if self.in_flight else None,
            "watchers": {cid: {"alive": w.is_alive(), "handler_errors": w.handler_errors, "restarts": w.restarts}
                         for cid, w in self.watchers.items()},
            "bus_alive": self.bus.is_alive() if self.bus else False,
            "outputs_alive": self.outputs.is_alive() if self.outputs else {},
            "output_errors": dict(self.outputs.errors) if self.outputs else {},
            "worker_alive": bool(self._threads) and self._threads[0].is_alive(),
            "last_frame_at": self.last_frame_at.isoformat() if self.last_frame_at else None,
            "counts": dict(self.pipeline.counts) if self.pipeline else {},
            "errors": dict(self.errors),
        }

    def run_forever(self) -> int:
        """``inspector run``: SIGTERM/SIGINT stop cleanly (exit 0), SIGHUP reloads config and templates."""
        stop = threading.Event()

        def request_stop(*_: object) -> None:
            stop.set()
            self._start_aborted.set()

        handlers = {signal.SIGTERM: request_stop, signal.SIGINT: request_stop,
                    signal.SIGHUP: lambda *_: self.request_reload()}
        previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
        try:
            self.start()
        except BaseException:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            raise
        # READY=1 only now: model loaded, DB migrated, bus bound, watchers running. WATCHDOG=1 only while frames
        # move (or nothing waits) and observers/worker are alive; STATUS= carries counts and queue depth.
        self.notifier.ready(status=self.status_line())
        monitor = ProgressMonitor(self.pipeline_snapshot, self.cfg.supervision.stall_s)
        pinger = WatchdogPinger(self.notifier, monitor.check, watchdog_interval() or 5.0, status=self.status_line)
        pinger.start()
        try:
            while not stop.wait(0.5):
                pass
        finally:
            pinger.stop()
            self.notifier.stopping(status="stopping: finishing the frame in flight")
            self.stop()
            self.notifier.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0
