"""One frame, start to finish: ingest -> decode -> align -> detect -> DB commit -> publish -> store.

The order is the durability argument: the file leaves the drop folder only after its result (a ``FrameResult``
with its result sequence number, and its alarm with the alarm sequence number) is committed, and the result goes
to the outputs only after that commit. A crash anywhere leaves the file in the drop folder (reprocessed at start,
or recognised as done by its (camera, name, sha256) row), or a committed result the replay endpoint can serve.
Nothing is lost and nothing is counted twice. Quarantined frames are committed results too (NOT_INSPECTED).

Per-stage timings go to ``stage_hooks`` (stage name, seconds) and each outcome to ``frame_hooks``: the seams the
service work (Prometheus etc.) plugs into without touching this module.
"""
from __future__ import annotations

import logging
import os
import re
import stat
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from inspector import MAX_FRAME_PIXELS
from inspector.align import AlignResult, align_template, alignment_residual
from inspector.annotate import save_annotated
from inspector.backends.base import Detection, DetectorBackend
from inspector.config import SEVERITY_RANK, CameraConfig, StationConfig
from inspector.db.errors import describe as describe_row_error, is_row_error
from inspector.db.models import DetectionRow, Frame
from inspector.db.writer import DbWriter
from inspector.detector_strikes import DetectorStrikes
from inspector.frame_file import FileSignature, FrameRead, NotReady, Refused, hardlinks_protected, read_frame
from inspector.imageformat import ImageHeader, inspect_image
from inspector.ingest import FrameJob, sha256_bytes
from inspector.logging_json import log_fields
from inspector.naming import FrameName, FrameNameError, parse_frame_name, printable_name
from inspector.outputs import FrameResult, OutputDispatcher, Verdict
from inspector.outputs.result import AlarmRuleRef, DetectionResult, ImageSize, ModelRef, QuarantineInfo, TemplateRef
from inspector.outputs.session import SessionSequencer, record
from inspector.quarantine import Quarantine, QuarantineReason
from inspector.resources import ResourceExhausted, describe, is_resource_exhaustion
from inspector.storage import (bounded_name, dated_dir, dispose_unread, store_frame, unique_destination,
                               write_reason)
from inspector.supervisor import DetectorTimeout, InspectionUnavailable
from inspector.templates import TemplateStore

log = logging.getLogger("inspector.pipeline")
STAGES = ("ingest", "decode", "align", "detect", "annotate", "db", "publish", "move")

StageHook = Callable[[str, float], None]  # (stage, seconds), e.g. InspectorMetrics.observe_stage


@dataclass
class FrameOutcome:
    job: FrameJob
    status: str  # ok | defective | quarantined | duplicate | gone | not_ready (handed back to the watcher)
    frame_id: int | None = None
    reason: str | None = None
    reason_kind: QuarantineReason | None = None  # why it was not inspected (quarantined)
    detections: list[Detection] = field(default_factory=list)
    severity: str | None = None
    alarm_seq: int | None = None
    shift: tuple[float, float] | None = None
    position: str | None = None
    template_id: int | None = None
    residual: float | None = None  # alignment residual (inspector.drift), None without a template
    destination: Path | None = None
    result: FrameResult | None = None  # the committed result (None: duplicate/gone, committed before)
    stage_ms: dict[str, float] = field(default_factory=dict)
    stage_cpu_ms: dict[str, float] = field(default_factory=dict)  # thread CPU time per stage
    t_result: float = 0.0  # perf_counter when detection finished (alarm latency reference)


FrameHook = Callable[[FrameOutcome], None]


@dataclass
class Analysis:
    """What ``Pipeline.analyze`` found out about a frame; ``kind``: result | quarantine | duplicate | gone |
    not_ready (still being written: the daemon gives it back to the watcher, nothing is committed)."""

    job: FrameJob
    laps: "_Laps"
    kind: str
    cam: CameraConfig
    camera_id: int
    db_name: str = ""  # the file name as stored (printable: undecodable bytes escaped)
    read: FrameRead | None = None  # the version of the file read (None: refused unread, or gone)
    entry: FileSignature | None = None  # a refused entry, for its disposal
    digest: str | None = None  # sha256 of the bytes read (None: never read)
    existing: Frame | None = None
    name: FrameName | None = None
    image: np.ndarray | None = None
    template: np.ndarray | None = None
    template_id: int | None = None
    template_version: int | None = None
    alignment: AlignResult | None = None
    residual: float | None = None
    detections: list[Detection] = field(default_factory=list)
    t_result: float = 0.0
    q_kind: QuarantineReason | None = None
    q_message: str = ""


class _Laps:
    """Accumulating stopwatch: ``lap(stage)`` charges the time since the previous lap to ``stage``."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}
        self.cpu_ms: dict[str, float] = {}  # this thread's CPU time: the cost without other processes' contention
        self.restart()

    def restart(self) -> None:
        self._t = time.perf_counter()
        self._c = time.thread_time()

    def charge_cpu(self, stage: str, seconds: float) -> None:
        """Add CPU time another thread spent for ``stage`` (the supervisor's detector worker runs inference)."""
        self.cpu_ms[stage] = self.cpu_ms.get(stage, 0.0) + seconds * 1000.0

    def lap(self, stage: str) -> float:
        now, cpu = time.perf_counter(), time.thread_time()
        self.ms[stage] = self.ms.get(stage, 0.0) + (now - self._t) * 1000.0
        self.cpu_ms[stage] = self.cpu_ms.get(stage, 0.0) + (cpu - self._c) * 1000.0
        self._t, self._c = now, cpu
        return now


# A frame's pixel budget (MAX_FRAME_PIXELS, defined in inspector/__init__.py where it also becomes OpenCV's
# OPENCV_IO_MAX_IMAGE_PIXELS). A few KB of PNG can declare 20000x20000 (a decompression bomb: 1.2 GB decoded); on a
# small line PC that is an OOM kill, a restart, and the same file again: a crash loop. Checked from the header of
# every format ``imageformat`` knows; OpenCV's limit is the backstop for any other format it decodes.
MAX_FRAME_BYTES = 3 * MAX_FRAME_PIXELS + (1 << 20)  # an uncompressed 8-bit RGB frame at the limit, plus headers
MAX_DETECTOR_TIMEOUTS = 2  # a frame that hangs the detector this often (fresh backend each time) is quarantined


def check_frame_bytes(data: bytes, suffix: str, incomplete_final: bool) -> ImageHeader:
    """The checks before any decoding: declared pixels within the limit, and the bytes whole. A prefix of an
    image raises ``NotReady``, or, once it has been unchanged for the camera's ``incomplete_after_s``
    (``incomplete_final``), quarantine ``incomplete`` (``empty`` for zero bytes)."""
    header = inspect_image(data, suffix)
    if header.pixels is not None and header.pixels > MAX_FRAME_PIXELS:
        raise Quarantine(QuarantineReason.TOO_LARGE, f"{header.format} header declares {header.width}x{header.height} "
                         f"pixels (limit {MAX_FRAME_PIXELS:,}); not decoded")
    if not data or header.whole is False:
        if not incomplete_final:
            raise NotReady("not whole yet")
        if not data:
            raise Quarantine(QuarantineReason.EMPTY, "zero-byte file")
        raise Quarantine(QuarantineReason.INCOMPLETE, f"{header.format} file is not whole ({len(data):,} bytes: no "
                         "end marker, or shorter than its header declares) and stopped growing")
    return header


def decode_rgb(data: bytes) -> np.ndarray:
    """Decode to 8-bit RGB (grey, 16-bit and alpha frames are normalised); call ``check_frame_bytes`` first."""
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:  # OpenCV's own limit (a format imageformat does not parse), or a malformed header
        detail = str(exc).strip().splitlines()[-1][:160]
        if "CV_IO_MAX_IMAGE" in detail:
            raise Quarantine(QuarantineReason.TOO_LARGE, f"refused by OpenCV's decode limit ({detail})") from None
        raise Quarantine(QuarantineReason.CORRUPT, f"not a decodable image ({detail})") from None
    if image is None:
        raise Quarantine(QuarantineReason.CORRUPT, "not a decodable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class Pipeline:
    def __init__(self, cfg: StationConfig, factory: sessionmaker[Session], writer: DbWriter,
                 camera_ids: dict[str, int], templates: TemplateStore, backend: DetectorBackend, model: ModelRef | None,
                 sequencer: SessionSequencer, outputs: OutputDispatcher | None = None) -> None:
        self.factory = factory  # reads (any thread)
        self.writer = writer  # writes: the daemon's one database writer
        self.camera_ids = camera_ids
        self.templates = templates
        self.backend = backend
        self.model = model
        self.sequencer = sequencer
        self.outputs = outputs or OutputDispatcher()
        self.stage_hooks: list[StageHook] = []
        self.frame_hooks: list[FrameHook] = []
        self.counts: Counter[str] = Counter()
        # Detector hangs per frame content, updated from every analysis thread (see detector_strikes).
        self.strikes = DetectorStrikes(MAX_DETECTOR_TIMEOUTS)
        self._lock = threading.Lock()  # serialises commit(): gap-free sequence in commit order
        self._detect_lock = threading.Lock()  # for backends that are not ``thread_safe``
        self._links_protected = hardlinks_protected()
        self.configure(cfg)

    def configure(self, cfg: StationConfig) -> None:
        """Apply a (re)loaded config: thresholds, rules, retention and camera patterns take effect next frame."""
        self.cfg = cfg
        self._patterns = {c.id: re.compile(c.pattern) for c in cfg.cameras}
        self._zones = {c.id: c.zone for c in cfg.cameras}

    # -- stages ---------------------------------------------------------------------------------------------
    def _existing(self, camera_id: int, name: str, digest: str) -> Frame | None:
        with self.factory() as db:
            return db.scalar(select(Frame).where(Frame.camera_id == camera_id, Frame.name == name,
                                                 Frame.sha256 == digest))

    def _select(self, detections: list[Detection]) -> tuple[list[Detection], list[int | None], int | None]:
        """Drop detections under their class threshold; the alarm rule per detection (index) and the rule that
        sets the frame's severity (the first rule of the worst severity), or None."""
        kept = [d for d in detections if d.score >= self.cfg.thresholds.for_class(d.label)]
        rules = [self.cfg.alarm_rule_for(d.label, d.score, d.area) for d in kept]
        matched = [r for r in rules if r is not None]
        fired = (min(matched, key=lambda r: (-SEVERITY_RANK[self.cfg.alarm_rules[r].severity], r))
                 if matched else None)
        return kept, rules, fired

    def _result(self, a: Analysis, frame: Frame, verdict: Verdict, kept: Sequence[Detection] = (),
                rules: Sequence[int | None] = (), fired: int | None = None,
                quarantine: QuarantineInfo | None = None) -> FrameResult:
        """The frame's FrameResult with the session's next result seq (and alarm seq when a rule fired)."""
        alarm_rules = self.cfg.alarm_rules
        rule = alarm_rules[fired] if fired is not None else None
        detections = [DetectionResult(class_name=d.label, class_id=d.class_id, score=round(d.score, 4),
                                      box=tuple(round(v, 1) for v in d.box), area=round(d.area, 1),  # type: ignore[arg-type]
                                      severity=alarm_rules[r].severity if r is not None else None, rule=r)
                      for d, r in zip(kept, rules)]
        image = a.image
        return FrameResult(
            station=self.cfg.station, camera=a.cam.id, session=self.sequencer.session_id,
            seq=self.sequencer.peek_result(), verdict=verdict, frame=a.db_name, frame_id=frame.id,
            position=frame.position, serial=frame.serial, sha256=frame.sha256, captured_at=frame.captured_at,
            received_at=a.job.received_at, processed_at=frame.processed_at, model=self.model,
            template=(TemplateRef(id=a.template_id, version=a.template_version)
                      if a.template_id is not None and a.template_version is not None else None),
            image=ImageSize(width=image.shape[1], height=image.shape[0]) if image is not None else None,
            detections=detections, severity=rule.severity if rule else None,
            rule=(AlarmRuleRef(index=fired, class_name=rule.cls, severity=rule.severity, min_score=rule.min_score,
                               min_area=rule.min_area) if rule is not None and fired is not None else None),
            alarm_seq=self.sequencer.peek_alarm() if rule is not None and frame.position is not None else None,
            quarantine=quarantine, shift=a.alignment.shift if a.alignment is not None else None,
            stored=frame.stored_path, annotated=frame.annotated_path,
        ).with_detected_at(a.t_result)

    def _publish(self, result: FrameResult) -> None:
        """After the commit: advance the session's counters, then hand the result to every output."""
        self.sequencer.advance(result)
        self.outputs.publish(result)

    # -- the frame ------------------------------------------------------------------------------------------
    def process(self, job: FrameJob) -> FrameOutcome:
        """Analyse and commit one frame on the calling thread."""
        return self.commit(self.analyze(job))

    def analyze(self, job: FrameJob) -> "Analysis":
        """Read, hash, decode, align, detect: no writes, so several frames may be analysed concurrently
        (OpenCV and ONNX Runtime release the GIL); ``commit`` then serialises the side effects in order."""
        laps = _Laps()
        cam = self.cfg.camera(job.camera)
        a = Analysis(job, laps, "result", cam, self.camera_ids[cam.id], db_name=printable_name(job.path.name))
        final = job.signature is not None and time.monotonic() - job.unchanged_since >= cam.incomplete_after_s
        try:
            a.read = read_frame(job.path, MAX_FRAME_BYTES, job.signature, self._links_protected)
        except FileNotFoundError:
            a.kind = "gone"
            return a
        except NotReady:
            a.kind = "not_ready"
            return a
        except Refused as q:
            a.kind, a.q_kind, a.q_message, a.entry = "quarantine", q.kind, q.message, q.entry
            return a
        except OSError as exc:  # unreadable (permissions, I/O error): visible, and retried by the tracker
            if is_resource_exhaustion(exc):
                raise ResourceExhausted(describe(exc)) from exc  # the machine, not the frame: keep it, retry
            log.error("cannot read frame", **log_fields(camera=cam.id, frame=a.db_name, error=str(exc)))
            a.kind = "not_ready"
            return a
        a.digest = sha256_bytes(a.read.data)
        a.existing = self._existing(a.camera_id, a.db_name, a.digest)
        if a.existing is not None:
            a.kind = "duplicate"
            return a
        try:
            try:  # the name first, so a corrupt frame's result still says its position and serial ...
                a.name, bad_name = self._parse_name(cam, job.path.name), None
            except Quarantine as q:
                bad_name = q
            check_frame_bytes(a.read.data, job.path.suffix.lower(), incomplete_final=final)
            if bad_name is not None:  # ... but a file still being written is never quarantined, whatever its name
                raise bad_name
            laps.lap("ingest")
            a.image = decode_rgb(a.read.data)
            laps.lap("decode")
            a.template_id, a.template_version, a.alignment = self._aligned_template(cam, a.name, a.image)
            a.template = a.alignment.template if a.alignment is not None else None
            laps.lap("align")
            if getattr(self.backend, "thread_safe", False):
                a.detections = self.backend.detect([a.image], [a.template])[0]
            else:
                with self._detect_lock:
                    a.detections = self.backend.detect([a.image], [a.template])[0]
            a.t_result = laps.lap("detect")
            laps.charge_cpu("detect", float(getattr(self.backend, "last_detect_cpu_s", 0.0)))
            if a.alignment is not None:
                residual = alignment_residual(a.alignment, [d.box for d in a.detections])
                a.residual = residual if np.isfinite(residual) else None
                laps.lap("align")
            self.strikes.success(a.digest)
        except NotReady:
            a.kind = "not_ready"
        except Quarantine as q:
            a.kind, a.q_kind, a.q_message = "quarantine", q.kind, q.message
        except DetectorTimeout:
            strikes = self.strikes.timeout(a.digest)
            if strikes is None:
                raise  # probably the detector, not the frame: the daemon keeps the frame and retries it
            a.kind, a.q_kind = "quarantine", QuarantineReason.DETECTOR_TIMEOUT
            a.q_message = (f"the detector hung on this frame {strikes} times while answering other frames "
                           "(backend restarted in between)")
        except InspectionUnavailable:
            raise  # no detector right now: the frame is fine; the daemon keeps it and retries (never quarantine)
        except Exception as exc:  # noqa: BLE001 - a frame that breaks a stage is quarantined, the daemon goes on
            if is_resource_exhaustion(exc):
                raise ResourceExhausted(describe(exc)) from exc  # the machine, not the frame: keep it, retry
            log.exception("frame processing failed", **log_fields(camera=cam.id, frame=a.db_name))
            a.kind, a.q_kind = "quarantine", QuarantineReason.ERROR
            a.q_message = f"processing error: {type(exc).__name__}: {exc}"
        return a

    def commit(self, a: "Analysis") -> FrameOutcome:
        """DB transaction (frame, detections, alarm with the next sequence number), publish, move the file.
        One at a time: that is what keeps the alarm sequence gap-free and in commit order."""
        with self._lock:
            a.laps.restart()  # time spent waiting for the commit slot is nobody's stage
            if a.kind in ("gone", "not_ready"):
                outcome = FrameOutcome(a.job, a.kind)
            elif a.kind == "duplicate":
                assert a.existing is not None
                outcome = self._finish_duplicate(a, a.existing)
            elif a.kind == "quarantine":
                outcome = self._quarantine(a)
            else:
                outcome = self._commit_result(a)
            outcome.stage_ms = a.laps.ms
            outcome.stage_cpu_ms = a.laps.cpu_ms
        if outcome.status == "not_ready":
            return outcome  # not a result: the watcher tracks the file until it is whole or stops growing
        self.counts[outcome.status] += 1
        if outcome.reason_kind:
            self.counts[f"quarantined_{outcome.reason_kind}"] += 1
        for hook in self.stage_hooks:
            for stage, ms in outcome.stage_ms.items():
                hook(stage, ms / 1000.0)
        for frame_hook in self.frame_hooks:
            frame_hook(outcome)
        return outcome

    def _parse_name(self, cam: CameraConfig, filename: str) -> FrameName:
        try:
            return parse_frame_name(self._patterns[cam.id], filename, self._zones[cam.id])
        except FrameNameError as exc:
            raise Quarantine(QuarantineReason.BAD_NAME, str(exc)) from None

    def _aligned_template(self, cam: CameraConfig, name: FrameName, image: np.ndarray):
        active = self.templates.active(cam.id, name.position)
        if active is None:
            if self.backend.needs_template:
                raise Quarantine(QuarantineReason.NO_TEMPLATE, f"no active template for camera '{cam.id}' position "
                                 f"'{name.position}' and the model needs one")
            return None, None, None
        if active.image.shape[:2] != image.shape[:2]:
            # A camera that changed resolution must be noticed, not compared against a stretched reference.
            (h, w), (th, tw) = image.shape[:2], active.image.shape[:2]
            raise Quarantine(QuarantineReason.WRONG_SIZE, f"frame {w}x{h} vs template {tw}x{th} (camera '{cam.id}' "
                             f"position '{name.position}', template {active.id})")
        a = self.cfg.alignment
        return active.id, active.version, align_template(image, active.image, a.method, a.max_shift, a.downscale)

    def _destination(self, root_name: str, cam: CameraConfig, name: str, digest: str | None,
                     when: datetime) -> Path:
        return unique_destination(dated_dir(self.cfg.dir_for(root_name), cam.id, when), name, digest)  # type: ignore[arg-type]

    def _commit_result(self, a: Analysis) -> FrameOutcome:
        job, cam, name, laps = a.job, a.cam, a.name, a.laps
        assert name is not None and a.read is not None and a.digest is not None
        shift = a.alignment.shift if a.alignment is not None else None
        now = datetime.now(timezone.utc)
        kept, rules, fired = self._select(a.detections)
        status = "defective" if kept else "ok"
        dest = None
        if not (status == "ok" and self.cfg.retention.delete_ok_frames):
            dest = self._destination("processed", cam, a.db_name, a.digest, now)
        annotated = None  # path decided now (it goes into the row and the result), image written after publish
        if kept and self.cfg.save_annotated:
            annotated = (dated_dir(self.cfg.dir_for("annotated"), cam.id, now)
                         / f"{bounded_name(Path(a.db_name).stem)}-{a.digest[:8]}.jpg")
        try:
            with self.writer.begin() as db:
                frame = Frame(camera_id=a.camera_id, name=a.db_name, sha256=a.digest, position=name.position,
                              serial=name.serial, status=status, source_path=printable_name(str(job.path)),
                              stored_path=str(dest) if dest else None,
                              annotated_path=str(annotated) if annotated else None, captured_at=name.timestamp,
                              processed_at=now, template_id=a.template_id,
                              model_id=self.model.id if self.model else None,
                              shift_x=shift[0] if shift else None, shift_y=shift[1] if shift else None,
                              align_response=a.alignment.response if a.alignment is not None else None,
                              align_residual=a.residual, latency_ms=(a.t_result - job.offered_at) * 1000.0,
                              stage_ms={k: round(v, 3) for k, v in laps.ms.items()})
                db.add(frame)
                db.flush()
                db.add_all([DetectionRow(frame_id=frame.id, class_id=d.class_id, class_name=d.label, score=d.score,
                                         x1=d.box[0], y1=d.box[1], x2=d.box[2], y2=d.box[3]) for d in kept])
                result = self._result(a, frame, Verdict.NG if kept else Verdict.OK, kept, rules, fired)
                record(db, result)
                db.flush()
        except Exception as exc:  # noqa: BLE001 - sorted below: a refused row is quarantined, an outage re-raised
            if not is_row_error(exc):
                raise
            existing = self._existing(a.camera_id, a.db_name, a.digest) if isinstance(exc, IntegrityError) else None
            if existing is not None:
                return self._finish_duplicate(a, existing)
            a.q_kind = QuarantineReason.DB_REJECTED
            a.q_message = f"the database refused the row: {describe_row_error(exc)}"
            return self._quarantine(a)
        laps.lap("db")
        self._publish(result)
        laps.lap("publish")
        if annotated is not None and a.image is not None:
            try:
                save_annotated(annotated, a.image, kept, [d.severity for d in result.detections])
            except OSError:
                log.exception("cannot write annotated image", **log_fields(path=str(annotated)))
            laps.lap("annotate")
        self._store(a, dest)
        laps.lap("move")
        return FrameOutcome(job, status, frame.id, detections=kept, severity=result.severity,
                            alarm_seq=result.alarm_seq, shift=shift, position=name.position,
                            template_id=a.template_id, residual=a.residual, destination=dest, t_result=a.t_result,
                            result=result)

    def _store(self, a: Analysis, dest: Path | None) -> Path | None:
        """The file's disposition after its row is committed; a failure (disk full, share gone) leaves it in the
        drop folder, where the next reconcile finds it and the committed row makes it a duplicate to finish."""
        try:
            if a.read is not None:
                return store_frame(a.job.path, dest, a.read)
            if a.entry is not None and dest is not None:
                return dispose_unread(a.job.path, dest, a.entry)
        except OSError:
            log.exception("cannot move frame out of the drop folder", **log_fields(frame=a.db_name, dest=str(dest)))
        return None

    def _quarantine(self, a: Analysis) -> FrameOutcome:
        job, cam, laps = a.job, a.cam, a.laps
        kind, message = a.q_kind or QuarantineReason.ERROR, a.q_message
        now = datetime.now(timezone.utc)
        dest = self._destination("quarantine", cam, a.db_name, a.digest, now)
        kept = a.read is not None or (a.entry is not None and a.entry.kind != stat.S_IFLNK and a.entry.links == 1)
        reason = {"station": self.cfg.station, "camera": cam.id, "frame": a.db_name, "sha256": a.digest,
                  "kind": kind.value, "reason": message, "time": now.isoformat(), "source": printable_name(str(job.path)),
                  "kept": kept}
        if a.entry is not None and a.entry.kind == stat.S_IFLNK:
            reason["link_target"] = _link_text(job.path)
        frame_id, result = self._insert_quarantine_row(a, kind, message, dest if kept else None, now)
        if frame_id is not None:
            reason["frame_id"] = frame_id
        laps.lap("db")
        if result is not None:
            self._publish(result)
        laps.lap("publish")
        stored = self._store(a, dest)
        try:
            write_reason(dest, reason)
        except OSError:
            log.exception("cannot write the quarantine reason file", **log_fields(frame=a.db_name, dest=str(dest)))
        laps.lap("move")
        log.warning("frame quarantined", **log_fields(camera=cam.id, frame=a.db_name, kind=kind.value,
                                                      reason=message, stored=str(stored) if stored else None))
        return FrameOutcome(job, "quarantined", frame_id, reason=message, reason_kind=kind, destination=stored,
                            result=result)

    def _insert_quarantine_row(self, a: Analysis, kind: QuarantineReason, message: str, stored: Path | None,
                               now: datetime) -> tuple[int | None, FrameResult | None]:
        """The quarantine row and its NOT_INSPECTED result, one transaction. Should the database refuse them, they
        are written again without the fields taken from the name (the likely culprits); refused again, the frame is
        quarantined without a row or result (logged)."""
        name = a.name if kind != QuarantineReason.DB_REJECTED else None
        for fields_from_name in ([True, False] if name is not None else [False]):
            try:
                with self.writer.begin() as db:
                    frame = Frame(camera_id=a.camera_id, name=a.db_name, sha256=a.digest, reason_code=kind.value,
                                  position=name.position if fields_from_name and name else None,
                                  serial=name.serial if fields_from_name and name else None,
                                  captured_at=name.timestamp if fields_from_name and name else None,
                                  status="quarantined", reason=f"{kind.value}: {message}",
                                  source_path=printable_name(str(a.job.path)),
                                  stored_path=str(stored) if stored else None, processed_at=now,
                                  model_id=self.model.id if self.model else None,
                                  stage_ms={k: round(v, 3) for k, v in a.laps.ms.items()})
                    db.add(frame)
                    db.flush()
                    result = self._result(a, frame, Verdict.NOT_INSPECTED,
                                          quarantine=QuarantineInfo(reason=kind.value, message=message))
                    record(db, result)
                return frame.id, result
            except Exception as exc:  # noqa: BLE001 - an outage is re-raised: the frame waits and is retried
                if not is_row_error(exc):
                    raise
                log.error("the database refused a quarantine row", **log_fields(
                    frame=a.db_name, kind=kind.value, with_name_fields=fields_from_name, error=describe_row_error(exc)))
        return None, None

    def _finish_duplicate(self, a: Analysis, row: Frame) -> FrameOutcome:
        """The result is already committed (a restart between commit and move, or the same content dropped
        again): only the file disposition is left to do, never a second row or alarm."""
        target = Path(row.stored_path) if row.stored_path else None
        assert a.read is not None
        if target is not None and target.is_file():
            store_frame(a.job.path, None, a.read)  # identical content (same sha256) already stored
        else:
            self._store(a, target)
            if row.status == "quarantined" and target is not None:
                write_reason(target, {"frame": row.name, "sha256": row.sha256, "kind": row.reason_code,
                                      "reason": row.reason, "frame_id": row.id})
        a.laps.lap("move")
        return FrameOutcome(a.job, "duplicate", row.id, destination=target)


def _link_text(path: Path) -> str | None:
    """What a symbolic link says (the link's own content, for the reason file): the target is never touched."""
    try:
        return printable_name(os.readlink(path))[:1024]
    except OSError:
        return None
