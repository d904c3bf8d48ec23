"""What the frame panel shows: the result, the versions it came from, each detection with the rule that fired,
the review state and its event history. Plain data for the Jinja templates and the JSON API alike."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from inspector.config import SEVERITY_RANK, AlarmRule, StationConfig
from inspector.db.models import Alarm, Camera, DetectionRow, Frame, ModelRecord, ReviewEvent, Template
from inspector.review import DetectionVerdict, FrameReviewState, TruthBox, frame_events, derive_review
from inspector.web.listing import as_utc


@dataclass
class DetectionView:
    row: DetectionRow
    verdict: DetectionVerdict
    severity: str | None  # recorded with the alarm (what the PLC was told)
    rule: str  # the current configuration's rule that matches, in words
    threshold: float | None

    @property
    def area(self) -> float:
        return max(0.0, self.row.x2 - self.row.x1) * max(0.0, self.row.y2 - self.row.y1)


@dataclass
class FrameView:
    frame: Frame
    camera: str
    station: str
    template: Template | None
    model: ModelRecord | None
    alarm: Alarm | None
    review: FrameReviewState
    detections: list[DetectionView]
    events: list[ReviewEvent]
    classes: list[str]
    own_station: bool
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def missed(self) -> list[TruthBox]:
        return self.review.missed

    def as_json(self) -> dict[str, object]:
        f = self.frame
        return {
            "id": f.id, "station": self.station, "camera": self.camera, "name": f.name, "position": f.position,
            "serial": f.serial, "status": f.status, "reason": f.reason,
            "processed_at": as_utc(f.processed_at).isoformat(),
            "captured_at": as_utc(f.captured_at).isoformat() if f.captured_at else None,
            "shift": [f.shift_x, f.shift_y], "align_response": f.align_response, "latency_ms": f.latency_ms,
            "template": None if self.template is None else {"id": self.template.id, "version": self.template.version,
                                                            "sha256": self.template.sha256},
            "model": None if self.model is None else {"id": self.model.id, "sha256": self.model.sha256,
                                                      "backend": self.model.backend,
                                                      "precision": self.model.precision},
            "severity": self.alarm.severity if self.alarm else None,
            "review": {"state": self.review.state, "last_reviewer": self.review.last_reviewer,
                       "missed": [{"event_id": m.event_id, "class": m.class_name, "box": list(m.box)}
                                  for m in self.missed]},
            "detections": [{"id": d.row.id, "class": d.row.class_name, "score": d.row.score,
                            "box": [d.row.x1, d.row.y1, d.row.x2, d.row.y2], "severity": d.severity,
                            "rule": d.rule, "verdict": d.verdict.state, "reviewed_class": d.verdict.class_name}
                           for d in self.detections],
            "events": [event_json(e) for e in self.events],
        }


def event_json(e: ReviewEvent) -> dict[str, object]:
    return {"id": e.id, "at": as_utc(e.created_at).isoformat(), "reviewer": e.reviewer, "action": e.action,
            "detection_id": e.detection_id, "class": e.class_name, "target_event_id": e.target_event_id,
            "box": None if e.x1 is None else [e.x1, e.y1, e.x2, e.y2], "comment": e.comment}


def matching_rule(cfg: StationConfig, label: str, score: float, area: float) -> AlarmRule | None:
    """The rule whose severity the detection gets today (highest severity among the matching rules)."""
    best = None
    for rule in cfg.alarm_rules:
        if rule.matches(label, score, area) and (best is None or SEVERITY_RANK[rule.severity] > SEVERITY_RANK[best.severity]):
            best = rule
    return best


def describe_rule(rule: AlarmRule | None) -> str:
    if rule is None:
        return "no alarm rule matches"
    parts = [f"class {rule.cls}"]
    if rule.min_score:
        parts.append(f"score ≥ {rule.min_score:g}")
    if rule.min_area:
        parts.append(f"area ≥ {rule.min_area:g} px²")
    return " · ".join(parts) + f" → {rule.severity}"


def recorded_severities(alarm: Alarm | None, detections: list[DetectionRow]) -> dict[int, str | None]:
    """Per detection, the severity the alarm payload carried (payload order = detection insert order)."""
    if alarm is None:
        return {}
    try:
        sent = json.loads(alarm.payload).get("detections", [])
    except ValueError:
        return {}
    ordered = sorted(detections, key=lambda d: d.id)
    if len(sent) != len(ordered):
        return {}
    return {d.id: s.get("severity") for d, s in zip(ordered, sent) if s.get("class") == d.class_name}


def frame_view(db: Session, cfg: StationConfig, frame_id: int, fallback_classes: list[str]) -> FrameView | None:
    frame = db.get(Frame, frame_id)
    if frame is None:
        return None
    camera = db.get(Camera, frame.camera_id)
    template = db.get(Template, frame.template_id) if frame.template_id is not None else None
    model = db.get(ModelRecord, frame.model_id) if frame.model_id is not None else None
    alarm = db.scalar(select(Alarm).where(Alarm.frame_id == frame.id).order_by(Alarm.id.desc()).limit(1))
    events = frame_events(db, frame.id)
    review = derive_review(frame.id, frame.detections, events)
    own = camera.station_id == cfg.station
    severities = recorded_severities(alarm, frame.detections)
    views = []
    for det in sorted(frame.detections, key=lambda d: -d.score):
        area = max(0.0, det.x2 - det.x1) * max(0.0, det.y2 - det.y1)
        rule = describe_rule(matching_rule(cfg, det.class_name, det.score, area)) if own else "rules of another station"
        views.append(DetectionView(det, review.detections[det.id], severities.get(det.id), rule,
                                   cfg.thresholds.for_class(det.class_name) if own else None))
    classes = list(model.class_names) if model is not None and model.class_names else list(fallback_classes)
    for det in frame.detections:
        if det.class_name not in classes:
            classes.append(det.class_name)
    return FrameView(frame, camera.name, camera.station_id, template, model, alarm, review, views,
                     list(reversed(events)), classes, own)
