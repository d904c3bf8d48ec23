"""``inspector history``: what the station saw, from the results database.

One query builder (filters: station, camera, position, class, time range, min score, status, review state)
feeding three renderings (aligned table, CSV, JSON), two summaries (detections per class, frames per day and
status) and the review log (who decided what, when: ``--reviews``). Every row carries the frame's review state
and the detection's verdict, derived from the append-only review events (``inspector.review``).
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Iterable, Literal

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from inspector.db.models import Camera, DetectionRow, Frame, FrameReview, ModelRecord, ReviewEvent
from inspector.review import review_states


@dataclass(frozen=True)
class HistoryFilter:
    station: str | None = None
    camera: str | None = None
    position: str | None = None
    cls: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    min_score: float | None = None
    status: str | None = None
    review: str | None = None  # unreviewed | partial | confirmed | false_call | corrected
    limit: int = 1000


@dataclass(frozen=True)
class HistoryRow:
    frame_id: int
    processed_at: str
    camera: str
    position: str | None
    serial: str | None
    frame: str
    status: str
    cls: str | None
    score: float | None
    box: str | None
    reason: str | None
    review: str  # the frame's review state
    verdict: str | None  # the detection's: confirmed | false_call | wrong_class:<class> | unreviewed
    model_verification: str | None  # signature | sha256 | unverified | config (see ModelRecord)


def _filtered(query: Select, f: HistoryFilter, join_detections: bool) -> Select:
    query = query.join(Camera, Camera.id == Frame.camera_id)
    if join_detections:
        query = query.outerjoin(DetectionRow, DetectionRow.frame_id == Frame.id)
    if f.station:
        query = query.where(Camera.station_id == f.station)
    if f.camera:
        query = query.where(Camera.name == f.camera)
    if f.position:
        query = query.where(Frame.position == f.position)
    if f.since:
        query = query.where(Frame.processed_at >= f.since)
    if f.until:
        query = query.where(Frame.processed_at < f.until)
    if f.status:
        query = query.where(Frame.status == f.status)
    if f.review == "unreviewed":
        query = query.where(~select(FrameReview.frame_id).where(FrameReview.frame_id == Frame.id).exists())
    elif f.review:
        query = query.where(select(FrameReview.frame_id).where(FrameReview.frame_id == Frame.id,
                                                               FrameReview.state == f.review).exists())
    if join_detections and f.cls:
        query = query.where(DetectionRow.class_name == f.cls)
    if join_detections and f.min_score is not None:
        query = query.where(DetectionRow.score >= f.min_score)
    return query


def query_history(db: Session, f: HistoryFilter) -> list[HistoryRow]:
    """One row per detection (frames without detections: one row with empty class), newest first."""
    query = _filtered(select(Frame, Camera.name, DetectionRow, ModelRecord.verification), f, True)
    query = query.outerjoin(ModelRecord, ModelRecord.id == Frame.model_id)
    query = query.order_by(Frame.processed_at.desc(), Frame.id.desc()).limit(f.limit)
    found = db.execute(query).all()
    states = review_states(db, list({frame.id: frame for frame, _, _, _ in found}.values()))
    rows = []
    for frame, camera, det, verification in found:
        state = states[frame.id]
        verdict = state.detections[det.id] if det else None
        rows.append(HistoryRow(
            frame.id, frame.processed_at.isoformat(timespec="seconds"), camera, frame.position, frame.serial,
            frame.name, frame.status, det.class_name if det else None, round(det.score, 4) if det else None,
            f"{det.x1:.0f},{det.y1:.0f},{det.x2:.0f},{det.y2:.0f}" if det else None, frame.reason, state.state,
            None if verdict is None else
            (f"wrong_class:{verdict.class_name}" if verdict.state == "wrong_class" else verdict.state),
            verification))
    return rows


def query_review_events(db: Session, f: HistoryFilter) -> list[dict[str, object]]:
    """The review log, newest first: one row per decision. ``since``/``until`` apply to the decision time,
    the other filters to the frame."""
    query = _filtered(select(ReviewEvent, Frame.name, Camera.name).join(Frame, Frame.id == ReviewEvent.frame_id),
                      HistoryFilter(station=f.station, camera=f.camera, position=f.position, status=f.status,
                                    review=f.review), False)
    if f.since:
        query = query.where(ReviewEvent.created_at >= f.since)
    if f.until:
        query = query.where(ReviewEvent.created_at < f.until)
    if f.cls:
        query = query.where(ReviewEvent.class_name == f.cls)
    query = query.order_by(ReviewEvent.id.desc()).limit(f.limit)
    return [{"event": e.id, "at": e.created_at.isoformat(timespec="seconds"), "reviewer": e.reviewer,
             "frame_id": e.frame_id, "camera": camera, "frame": name, "detection_id": e.detection_id,
             "action": e.action, "class": e.class_name, "target_event": e.target_event_id,
             "box": None if e.x1 is None else f"{e.x1:.0f},{e.y1:.0f},{e.x2:.0f},{e.y2:.0f}", "comment": e.comment}
            for e, name, camera in db.execute(query)]


def summary_per_class(db: Session, f: HistoryFilter) -> list[dict[str, object]]:
    query = _filtered(select(DetectionRow.class_name, func.count(DetectionRow.id),
                             func.count(func.distinct(Frame.id)), func.max(DetectionRow.score)), f, True)
    query = query.where(DetectionRow.id.is_not(None)).group_by(DetectionRow.class_name).order_by(DetectionRow.class_name)
    return [{"class": c, "detections": n, "frames": nf, "max_score": round(m, 4)} for c, n, nf, m in db.execute(query)]


def summary_per_day(db: Session, f: HistoryFilter) -> list[dict[str, object]]:
    """Frames per UTC day and status (dates computed in Python: portable across SQLite and PostgreSQL)."""
    counts: dict[tuple[str, str], int] = {}
    query = _filtered(select(Frame.processed_at, Frame.status), f, bool(f.cls or f.min_score is not None))
    if f.cls or f.min_score is not None:
        query = query.distinct()
    for when, status in db.execute(query):
        key = (when.date().isoformat(), status)
        counts[key] = counts.get(key, 0) + 1
    days: dict[str, dict[str, object]] = {}
    for (day, status), n in sorted(counts.items()):
        entry = days.setdefault(day, {"day": day, "frames": 0})
        entry[status] = n
        entry["frames"] = int(entry["frames"]) + n  # type: ignore[arg-type]
    return list(days.values())


def render_table(records: Iterable[dict[str, object]]) -> str:
    records = list(records)
    if not records:
        return "(no rows)"
    columns = list(dict.fromkeys(k for r in records for k in r))
    cells = [[("" if r.get(c) is None else str(r.get(c))) for c in columns] for r in records]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = lambda values: "  ".join(v.ljust(w) for v, w in zip(values, widths)).rstrip()  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(row) for row in cells)])


def render_csv(records: Iterable[dict[str, object]]) -> str:
    records = list(records)
    out = io.StringIO()
    if records:
        columns = list(dict.fromkeys(k for r in records for k in r))
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
    return out.getvalue()


def render(records: Iterable[dict[str, object]], fmt: Literal["table", "csv", "json"]) -> str:
    records = list(records)
    if fmt == "json":
        return json.dumps(records, indent=2, default=str)
    if fmt == "csv":
        return render_csv(records)
    return render_table(records)


def as_records(rows: Iterable[HistoryRow]) -> list[dict[str, object]]:
    return [{("class" if k == "cls" else k): v for k, v in asdict(r).items()} for r in rows]
