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
import re
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

from inspector.align import AlignResult, align_template, alignment_residual
from inspector.annotate import save_annotated
from inspector.backends.base import Detection, DetectorBackend
from inspector.config import SEVERITY_RANK, CameraConfig, StationConfig
from inspector.db.models import DetectionRow, Frame
from inspector.detector_strikes import DetectorStrikes
from inspector.ingest import FrameJob, sha256_bytes
from inspector.logging_json import log_fields
from inspector.naming import FrameName, FrameNameError, parse_frame_name
from inspector.resources import ResourceExhausted, describe, is_resource_exhaustion
from inspector.outputs import FrameResult, OutputDispatcher, Verdict
from inspector.outputs.result import AlarmRuleRef, DetectionResult, ImageSize, ModelRef, QuarantineInfo, TemplateRef
from inspector.outputs.session import SessionSequencer, record
from inspector.storage import dated_dir, move_file, quarantine_file, unique_destination
from inspector.supervisor import DetectorTimeout, InspectionUnavailable
from inspector.templates import TemplateStore

log = logging.getLogger("inspector.pipeline")
STAGES = ("ingest", "decode", "align", "detect", "annotate", "db", "publish", "move")

StageHook = Callable[[str, float], None]  # (stage, seconds), e.g. InspectorMetrics.observe_stage


class Quarantine(Exception):
    """Raised inside the pipeline to send the frame to quarantine with ``kind`` and a human message."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass
class FrameOutcome:
    job: FrameJob
    status: str  # ok | defective | quarantined | duplicate | gone
    frame_id: int | None = None
    reason: str | None = None
    reason_kind: str | None = None
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
    """What ``Pipeline.analyze`` found out about a frame; ``kind``: result | quarantine | duplicate | gone."""

    job: FrameJob
    laps: "_Laps"
    kind: str
    cam: CameraConfig
    camera_id: int
    digest: str = ""
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
    q_kind: str = ""
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


def is_complete_image(data: bytes, suffix: str) -> bool:
    """JPEG must end with EOI, PNG with IEND: a truncated file decodes to a half-grey image otherwise."""
    tail = data[-32:]
    if suffix in (".jpg", ".jpeg"):
        return b"\xff\xd9" in tail
    if suffix == ".png":
        return b"IEND" in tail
    return True


# A frame's pixel budget. A few KB of PNG can declare 20000x20000 (a decompression bomb: 1.2 GB decoded); on a
# small line PC that is an OOM kill, a restart, and the same file again: a crash loop. Checked from the header.
MAX_FRAME_PIXELS = 100_000_000
MAX_DETECTOR_TIMEOUTS = 2  # a frame that hangs the detector this often (fresh backend each time) is quarantined


def image_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG or BMP header without decoding; None when the format is not recognised."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24 and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if data[:2] == b"BM" and len(data) >= 26:
        return abs(int.from_bytes(data[18:22], "little", signed=True)), abs(int.from_bytes(data[22:26], "little", signed=True))
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 <= len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            length = int.from_bytes(data[i + 2:i + 4], "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
                return int.from_bytes(data[i + 7:i + 9], "big"), int.from_bytes(data[i + 5:i + 7], "big")
            i += 2 + length
    return None


def decode_rgb(data: bytes, suffix: str) -> np.ndarray:
    if not is_complete_image(data, suffix):
        raise Quarantine("corrupt", f"truncated {suffix} file (no end marker)")
    dims = image_dimensions(data)
    if dims is not None and dims[0] * dims[1] > MAX_FRAME_PIXELS:
        raise Quarantine("too_large", f"image declares {dims[0]}x{dims[1]} pixels (limit {MAX_FRAME_PIXELS:,}); "
                                      "not decoded")
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as exc:  # e.g. OpenCV's own pixel limit, or a malformed header
        raise Quarantine("corrupt", f"not a decodable image ({str(exc).strip().splitlines()[-1][:120]})") from None
    if image is None:
        raise Quarantine("corrupt", "not a decodable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class Pipeline:
    def __init__(self, cfg: StationConfig, factory: sessionmaker[Session], camera_ids: dict[str, int],
                 templates: TemplateStore, backend: DetectorBackend, model: ModelRef | None,
                 sequencer: SessionSequencer, outputs: OutputDispatcher | None = None) -> None:
        self.factory = factory
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
        self.configure(cfg)

    def configure(self, cfg: StationConfig) -> None:
        """Apply a (re)loaded config: thresholds, rules, retention and camera patterns take effect next frame."""
        self.cfg = cfg
        self._patterns = {c.id: re.compile(c.pattern) for c in cfg.cameras}

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
            seq=self.sequencer.peek_result(), verdict=verdict, frame=a.job.path.name, frame_id=frame.id,
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
        a = Analysis(job, laps, "result", cam, self.camera_ids[cam.id])
        try:
            data = job.path.read_bytes()
        except FileNotFoundError:
            a.kind = "gone"
            return a
        a.digest = sha256_bytes(data)
        a.existing = self._existing(a.camera_id, job.path.name, a.digest)
        if a.existing is not None:
            a.kind = "duplicate"
            return a
        try:
            if not data:
                raise Quarantine("empty", "zero-byte file")
            a.name = self._parse_name(cam, job.path.name)
            laps.lap("ingest")
            a.image = decode_rgb(data, job.path.suffix.lower())
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
        except Quarantine as q:
            a.kind, a.q_kind, a.q_message = "quarantine", q.kind, q.message
        except DetectorTimeout:
            strikes = self.strikes.timeout(a.digest)
            if strikes is None:
                raise  # probably the detector, not the frame: the daemon keeps the frame and retries it
            a.kind, a.q_kind = "quarantine", "detector_timeout"
            a.q_message = (f"the detector hung on this frame {strikes} times while answering other frames "
                           "(backend restarted in between)")
        except InspectionUnavailable:
            raise  # no detector right now: the frame is fine; the daemon keeps it and retries (never quarantine)
        except Exception as exc:  # noqa: BLE001 - a frame that breaks a stage is quarantined, the daemon goes on
            if is_resource_exhaustion(exc):
                raise ResourceExhausted(describe(exc)) from exc  # the machine, not the frame: keep it, retry
            log.exception("frame processing failed", **log_fields(camera=cam.id, frame=job.path.name))
            a.kind, a.q_kind, a.q_message = "quarantine", "error", f"processing error: {type(exc).__name__}: {exc}"
        return a

    def commit(self, a: "Analysis") -> FrameOutcome:
        """DB transaction (frame, detections, alarm with the next sequence number), publish, move the file.
        One at a time: that is what keeps the alarm sequence gap-free and in commit order."""
        with self._lock:
            a.laps.restart()  # time spent waiting for the commit slot is nobody's stage
            if a.kind == "gone":
                outcome = FrameOutcome(a.job, "gone")
            elif a.kind == "duplicate":
                outcome = self._finish_duplicate(a.job, a.existing, a.laps)
            elif a.kind == "quarantine":
                outcome = self._quarantine(a)
            else:
                outcome = self._commit_result(a)
            outcome.stage_ms = a.laps.ms
            outcome.stage_cpu_ms = a.laps.cpu_ms
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
            return parse_frame_name(self._patterns[cam.id], filename)
        except FrameNameError as exc:
            raise Quarantine("bad_name", str(exc)) from None

    def _aligned_template(self, cam: CameraConfig, name: FrameName, image: np.ndarray):
        active = self.templates.active(cam.id, name.position)
        if active is None:
            if self.backend.needs_template:
                raise Quarantine("no_template", f"no active template for camera '{cam.id}' position "
                                                f"'{name.position}' and the model needs one")
            return None, None, None
        if active.image.shape[:2] != image.shape[:2]:
            # A camera that changed resolution must be noticed, not compared against a stretched reference.
            (h, w), (th, tw) = image.shape[:2], active.image.shape[:2]
            raise Quarantine("wrong_size", f"frame {w}x{h} vs template {tw}x{th} (camera '{cam.id}' position "
                                           f"'{name.position}', template {active.id})")
        a = self.cfg.alignment
        return active.id, active.version, align_template(image, active.image, a.method, a.max_shift, a.downscale)

    def _destination(self, root_name: str, cam: CameraConfig, name: str, digest: str, when: datetime) -> Path:
        return unique_destination(dated_dir(self.cfg.dir_for(root_name), cam.id, when), name, digest)  # type: ignore[arg-type]

    def _commit_result(self, a: Analysis) -> FrameOutcome:
        job, cam, name, laps = a.job, a.cam, a.name, a.laps
        assert name is not None
        shift = a.alignment.shift if a.alignment is not None else None
        now = datetime.now(timezone.utc)
        kept, rules, fired = self._select(a.detections)
        status = "defective" if kept else "ok"
        dest = None
        if not (status == "ok" and self.cfg.retention.delete_ok_frames):
            dest = self._destination("processed", cam, job.path.name, a.digest, now)
        annotated = None  # path decided now (it goes into the row and the result), image written after publish
        if kept and self.cfg.save_annotated:
            annotated = dated_dir(self.cfg.dir_for("annotated"), cam.id, now) / f"{job.path.stem}-{a.digest[:8]}.jpg"
        try:
            with self.factory.begin() as db:
                frame = Frame(camera_id=a.camera_id, name=job.path.name, sha256=a.digest, position=name.position,
                              serial=name.serial, status=status, source_path=str(job.path),
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
        except IntegrityError:
            existing = self._existing(a.camera_id, job.path.name, a.digest)
            if existing is None:
                raise
            return self._finish_duplicate(job, existing, laps)
        laps.lap("db")
        self._publish(result)
        laps.lap("publish")
        if annotated is not None and a.image is not None:
            try:
                save_annotated(annotated, a.image, kept, [d.severity for d in result.detections])
            except OSError:
                log.exception("cannot write annotated image", **log_fields(path=str(annotated)))
            laps.lap("annotate")
        self._store(job.path, dest)
        laps.lap("move")
        return FrameOutcome(job, status, frame.id, detections=kept, severity=result.severity,
                            alarm_seq=result.alarm_seq, shift=shift, position=name.position,
                            template_id=a.template_id, residual=a.residual, destination=dest, t_result=a.t_result,
                            result=result)

    def _store(self, src: Path, dest: Path | None) -> None:
        try:
            if dest is None:
                src.unlink(missing_ok=True)
            elif src.exists():
                move_file(src, dest)
        except OSError:
            log.exception("cannot move frame out of the drop folder", **log_fields(frame=str(src), dest=str(dest)))

    def _quarantine(self, a: Analysis) -> FrameOutcome:
        job, cam, name, digest, laps = a.job, a.cam, a.name, a.digest, a.laps
        kind, message = a.q_kind, a.q_message
        now = datetime.now(timezone.utc)
        dest = self._destination("quarantine", cam, job.path.name, digest, now)
        reason = {"station": self.cfg.station, "camera": cam.id, "frame": job.path.name, "sha256": digest,
                  "kind": kind, "reason": message, "time": now.isoformat(), "source": str(job.path)}
        with self.factory.begin() as db:
            frame = Frame(camera_id=a.camera_id, name=job.path.name, sha256=digest,
                          position=name.position if name else None, serial=name.serial if name else None,
                          status="quarantined", reason=f"{kind}: {message}", source_path=str(job.path),
                          stored_path=str(dest), processed_at=now, model_id=self.model.id if self.model else None,
                          stage_ms={k: round(v, 3) for k, v in laps.ms.items()})
            db.add(frame)
            db.flush()
            result = self._result(a, frame, Verdict.NOT_INSPECTED,
                                  quarantine=QuarantineInfo(reason=kind, message=message))
            record(db, result)
        laps.lap("db")
        self._publish(result)
        laps.lap("publish")
        quarantine_file(job.path, dest, reason)
        laps.lap("move")
        log.warning("frame quarantined", **log_fields(camera=cam.id, frame=job.path.name, kind=kind, reason=message))
        return FrameOutcome(job, "quarantined", frame.id, reason=message, reason_kind=kind, destination=dest,
                            result=result)

    def _finish_duplicate(self, job: FrameJob, row: Frame, laps: _Laps) -> FrameOutcome:
        """The result is already committed (a restart between commit and move, or the same content dropped
        again): only the file disposition is left to do, never a second row or alarm."""
        target = Path(row.stored_path) if row.stored_path else None
        if target is not None and target.exists():
            job.path.unlink(missing_ok=True)  # identical content (same sha256) already stored
        elif row.status == "quarantined" and target is not None:
            quarantine_file(job.path, target, {"frame": job.path.name, "sha256": row.sha256,
                                               "reason": row.reason, "frame_id": row.id})
        else:
            self._store(job.path, target)
        laps.lap("move")
        return FrameOutcome(job, "duplicate", row.id, destination=target)
