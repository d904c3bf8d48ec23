"""Reviews: what people decided about the detector's results, kept as an append-only event log.

Every decision is one ``ReviewEvent`` row (who, when, what); nothing is ever edited, a change of mind is a newer
event. The current state of a frame is *derived* from its events by one pure function (:func:`derive_review`),
and the derived summary (``FrameReview``: the state the review list filters and pages on) is rewritten in the
same transaction that appends an event, so the two can never disagree.

Rules of the derivation (newest event wins per target):

- a detection's verdict is the newest of its own events and the frame-level ``confirm`` / ``false_call``
  events (a frame verdict applies to all its detections): ``confirmed``, ``false_call`` or ``wrong_class``
  (the corrected class);
- a ``missed`` event adds a reviewer-drawn defect box, until a ``retract`` event names it;
- frame state: ``partial`` while a detection has no verdict (or a frame without detections has neither a
  verdict nor a drawn box); else ``corrected`` when a class was corrected, a box drawn, or true and false
  detections are mixed; else ``false_call`` (all detections false) or ``confirmed`` (all true; or a defect-free
  frame confirmed as such).

``FrameReviewState.truth`` is the reviewed ground truth that training exports consume: confirmed detections
(with their corrected class) and drawn boxes; ``complete`` says whether every detection has a verdict.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from inspector.db.models import DetectionRow, Frame, FrameReview, ReviewEvent

DETECTION_ACTIONS = ("confirm", "false_call", "wrong_class")
FRAME_ACTIONS = ("confirm", "false_call", "missed", "retract")
ACTIONS = ("confirm", "false_call", "wrong_class", "missed", "retract")
FRAME_STATES = ("unreviewed", "partial", "confirmed", "false_call", "corrected")
MAX_COMMENT = 2000


class ReviewError(ValueError):
    """A review request that cannot be recorded; the message says why (shown to the reviewer)."""


@dataclass(frozen=True)
class DetectionVerdict:
    detection_id: int
    state: str  # unreviewed | confirmed | false_call | wrong_class
    class_name: str  # the effective class: the corrected one after wrong_class
    box: tuple[float, float, float, float]
    reviewer: str | None = None
    at: datetime | None = None


@dataclass(frozen=True)
class TruthBox:
    class_name: str
    box: tuple[float, float, float, float]
    origin: str  # confirmed | reclassified | missed
    detection_id: int | None = None
    event_id: int | None = None


@dataclass
class FrameReviewState:
    frame_id: int
    state: str
    detections: dict[int, DetectionVerdict] = field(default_factory=dict)
    missed: list[TruthBox] = field(default_factory=list)
    events: int = 0
    last_reviewer: str | None = None
    reviewed_at: datetime | None = None

    def count(self, state: str) -> int:
        return sum(1 for v in self.detections.values() if v.state == state)

    @property
    def complete(self) -> bool:
        return self.state not in ("unreviewed", "partial")

    @property
    def truth(self) -> list[TruthBox]:
        """Reviewed defects: confirmed / reclassified detections (boxes from the detector) and drawn boxes."""
        found = [TruthBox(v.class_name, v.box, "confirmed" if v.state == "confirmed" else "reclassified",
                          detection_id=v.detection_id)
                 for v in self.detections.values() if v.state in ("confirmed", "wrong_class")]
        return found + self.missed


def _box(event: ReviewEvent) -> tuple[float, float, float, float]:
    return (float(event.x1), float(event.y1), float(event.x2), float(event.y2))  # type: ignore[arg-type]


def derive_review(frame_id: int, detections: Sequence[DetectionRow], events: Sequence[ReviewEvent]) -> FrameReviewState:
    """The current review state of a frame from its detections and its events (any order; sorted by id)."""
    events = sorted(events, key=lambda e: e.id)
    verdicts = {d.id: DetectionVerdict(d.id, "unreviewed", d.class_name, _det_box(d)) for d in detections}
    by_id = {d.id: d for d in detections}
    missed: dict[int, TruthBox] = {}
    frame_verdict = False
    for e in events:
        if e.detection_id is not None:
            if e.detection_id in by_id:
                verdicts[e.detection_id] = _verdict(by_id[e.detection_id], e)
        elif e.action in ("confirm", "false_call"):
            frame_verdict = True
            for det in detections:
                verdicts[det.id] = _verdict(det, e)
        elif e.action == "missed":
            missed[e.id] = TruthBox(str(e.class_name), _box(e), "missed", event_id=e.id)
        elif e.action == "retract" and e.target_event_id is not None:
            missed.pop(e.target_event_id, None)
    state = FrameReviewState(frame_id, "unreviewed", verdicts, list(missed.values()), len(events))
    if events:
        state.last_reviewer, state.reviewed_at = events[-1].reviewer, events[-1].created_at
        state.state = _frame_state(state, frame_verdict or any(v.state != "unreviewed" for v in verdicts.values()))
    return state


def _det_box(det: DetectionRow) -> tuple[float, float, float, float]:
    return (det.x1, det.y1, det.x2, det.y2)


def _verdict(det: DetectionRow, e: ReviewEvent) -> DetectionVerdict:
    if e.action == "wrong_class":
        return DetectionVerdict(det.id, "wrong_class", str(e.class_name), _det_box(det), e.reviewer, e.created_at)
    return DetectionVerdict(det.id, "confirmed" if e.action == "confirm" else "false_call", det.class_name,
                            _det_box(det), e.reviewer, e.created_at)


def _frame_state(s: FrameReviewState, verdict_given: bool) -> str:
    if s.count("unreviewed") or not (verdict_given or s.missed):
        return "partial"
    true_calls = s.count("confirmed") + s.count("wrong_class")
    if s.missed or s.count("wrong_class") or (true_calls and s.count("false_call")):
        return "corrected"
    return "false_call" if s.count("false_call") else "confirmed"


# -- database operations -------------------------------------------------------------------------------------
def _frame(db: Session, frame_id: int) -> Frame:
    frame = db.get(Frame, frame_id)
    if frame is None:
        raise ReviewError(f"no frame with id {frame_id}")
    return frame


def _validate(frame: Frame, action: str, detection_id: int | None, class_name: str | None,
              box: Sequence[float] | None, target_event_id: int | None, db: Session,
              class_names: Iterable[str] | None) -> None:
    if action not in ACTIONS:
        raise ReviewError(f"unknown review action {action!r} (one of {', '.join(ACTIONS)})")
    if frame.status == "quarantined":
        raise ReviewError(f"frame {frame.id} was quarantined ({frame.reason}); there is no result to review")
    if detection_id is not None:
        if action not in DETECTION_ACTIONS:
            raise ReviewError(f"'{action}' applies to a frame, not to a detection")
        if detection_id not in {d.id for d in frame.detections}:
            raise ReviewError(f"detection {detection_id} does not belong to frame {frame.id}")
    elif action not in FRAME_ACTIONS:
        raise ReviewError(f"'{action}' needs a detection")
    if action in ("wrong_class", "missed"):
        if not class_name:
            raise ReviewError(f"'{action}' needs the class")
        allowed = list(class_names or [])
        if allowed and class_name not in allowed:
            raise ReviewError(f"unknown class {class_name!r} (the model's classes: {', '.join(allowed)})")
    if action == "wrong_class" and class_name == next(d.class_name for d in frame.detections if d.id == detection_id):
        raise ReviewError(f"detection {detection_id} already has class {class_name!r}: confirm it instead")
    if action == "missed":
        if box is None or len(box) != 4:
            raise ReviewError("'missed' needs a box x1, y1, x2, y2")
        x1, y1, x2, y2 = box
        if not (x2 - x1 >= 1 and y2 - y1 >= 1 and min(x1, y1) >= 0):
            raise ReviewError(f"box {list(box)} is empty or outside the frame")
    if action == "retract":
        target = db.get(ReviewEvent, target_event_id) if target_event_id is not None else None
        if target is None or target.frame_id != frame.id or target.action != "missed":
            raise ReviewError("'retract' needs the id of a 'missed' box of this frame")


def record_review(db: Session, frame_id: int, action: str, reviewer: str, *, detection_id: int | None = None,
                  class_name: str | None = None, box: Sequence[float] | None = None, comment: str | None = None,
                  target_event_id: int | None = None, class_names: Iterable[str] | None = None,
                  image_size: tuple[int, int] | None = None) -> tuple[ReviewEvent, FrameReviewState]:
    """Append one decision and refresh the frame's derived state, inside the caller's transaction.

    ``class_names`` (the model's classes) restricts ``wrong_class`` / ``missed``; ``image_size`` (width,
    height) bounds a drawn box. Raises :class:`ReviewError` for anything that does not make sense."""
    if not reviewer:
        raise ReviewError("a review needs the reviewer's name")
    if comment is not None and len(comment) > MAX_COMMENT:
        raise ReviewError(f"comment longer than {MAX_COMMENT} characters")
    frame = _frame(db, frame_id)
    _validate(frame, action, detection_id, class_name, box, target_event_id, db, class_names)
    if box is not None and image_size is not None and (box[2] > image_size[0] or box[3] > image_size[1]):
        raise ReviewError(f"box {list(box)} lies outside the {image_size[0]}x{image_size[1]} frame")
    event = ReviewEvent(frame_id=frame.id, detection_id=detection_id, action=action, reviewer=reviewer,
                        class_name=class_name if action in ("wrong_class", "missed") else None,
                        comment=comment or None, target_event_id=target_event_id,
                        created_at=datetime.now(timezone.utc))
    if action == "missed":
        event.x1, event.y1, event.x2, event.y2 = (float(v) for v in box)  # type: ignore[union-attr]
    db.add(event)
    db.flush()
    return event, refresh_frame_review(db, frame)


def frame_events(db: Session, frame_id: int) -> list[ReviewEvent]:
    return list(db.scalars(select(ReviewEvent).where(ReviewEvent.frame_id == frame_id).order_by(ReviewEvent.id)))


def frame_review(db: Session, frame_id: int) -> FrameReviewState:
    frame = _frame(db, frame_id)
    return derive_review(frame.id, frame.detections, frame_events(db, frame.id))


def refresh_frame_review(db: Session, frame: Frame) -> FrameReviewState:
    """Re-derive the frame's state from all its events and write the summary row."""
    state = derive_review(frame.id, frame.detections, frame_events(db, frame.id))
    row = db.get(FrameReview, frame.id)
    if state.state == "unreviewed":
        if row is not None:
            db.delete(row)
        return state
    if row is None:
        row = FrameReview(frame_id=frame.id, processed_at=frame.processed_at)
        db.add(row)
    row.state = state.state
    row.confirmed = state.count("confirmed")
    row.false_calls = state.count("false_call")
    row.reclassified = state.count("wrong_class")
    row.missed = len(state.missed)
    row.pending = state.count("unreviewed")
    row.events = state.events
    row.last_reviewer = state.last_reviewer or ""
    row.reviewed_at = state.reviewed_at or datetime.now(timezone.utc)
    db.flush()
    return state


def review_states(db: Session, frames: Sequence[Frame]) -> dict[int, FrameReviewState]:
    """Derived states of many frames with one query for their events (history, exports)."""
    ids = [f.id for f in frames]
    events: dict[int, list[ReviewEvent]] = {i: [] for i in ids}
    for start in range(0, len(ids), 500):
        chunk = ids[start:start + 500]
        for e in db.scalars(select(ReviewEvent).where(ReviewEvent.frame_id.in_(chunk))):
            events[e.frame_id].append(e)
    return {f.id: derive_review(f.id, f.detections, events[f.id]) for f in frames}


def rebuild_frame_reviews(db: Session) -> int:
    """Re-derive every summary row from the event log (repair after a manual intervention); returns rows."""
    db.execute(delete(FrameReview))
    frame_ids = list(db.scalars(select(ReviewEvent.frame_id).distinct()))
    for frame_id in frame_ids:
        refresh_frame_review(db, _frame(db, frame_id))
    return len(frame_ids)
