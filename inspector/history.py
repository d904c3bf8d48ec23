"""``inspector history``: what the station saw, from the results database.

One query builder (filters: station, camera, position, class, time range, min score, status, review state)
feeding three renderings (aligned table, CSV, JSON), two summaries (detections per class, frames per day and
status) and the review log (who decided what, when: ``--reviews``). Rows are per detection (a frame without
detections: one row), but ``limit`` counts *frames*: the newest ``limit`` frames that pass the filters, with all
their matching detections. Every row carries the frame's alarm (severity, bus session and sequence number), its
review state and the detection's verdict (derived from the append-only review events, ``inspector.review``);
every time carries its UTC offset (shown in ``zone``, UTC by default).
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone, tzinfo
from typing import Iterable, Literal

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from inspector.db.models import Alarm, Camera, DetectionRow, Frame, FrameReview, ModelRecord, ReviewEvent, Station
from inspector.review import review_states


class HistoryError(ValueError):
    """The query names something the database does not know (a station or camera): an error, not "no rows"."""


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
    limit: int = 1000  # frames


@dataclass(frozen=True)
class HistoryRow:
    frame_id: int
    processed_at: str
    captured_at: str | None
    camera: str
    position: str | None
    serial: str | None
    frame: str
    status: str
    severity: str | None
    session: str | None
    seq: int | None
    cls: str | None
    score: float | None
    box: str | None
    reason_code: str | None
    reason: str | None
    review: str  # the frame's review state
    verdict: str | None  # the detection's: confirmed | false_call | wrong_class:<class> | unreviewed
    model_verification: str | None  # signature | sha256 | unverified | config (see ModelRecord)


def check_names(db: Session, f: HistoryFilter) -> None:
    """Raise ``HistoryError`` naming what exists when ``f`` asks for an unknown station or camera."""
    stations = list(db.scalars(select(Station.id).order_by(Station.id)))
    if f.station is not None and f.station not in stations:
        raise HistoryError(f"no station '{f.station}' in this database (stations: {', '.join(stations) or 'none'})")
    if f.camera is not None:
        query = select(Camera.name).distinct().order_by(Camera.name)
        if f.station is not None:
            query = query.where(Camera.station_id == f.station)
        cameras = list(db.scalars(query))
        if f.camera not in cameras:
            where = f" at station '{f.station}'" if f.station else ""
            raise HistoryError(f"no camera '{f.camera}'{where} (cameras: {', '.join(cameras) or 'none'})")


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


def _shown(when: datetime | None, zone: tzinfo) -> str | None:
    return when.astimezone(zone).isoformat(timespec="seconds") if when is not None else None


def query_history(db: Session, f: HistoryFilter, zone: tzinfo = timezone.utc) -> list[HistoryRow]:
    """One row per (matching) detection, frames without detections as one row; the newest ``f.limit`` frames."""
    detection_filter = bool(f.cls or f.min_score is not None)
    newest = (_filtered(select(Frame.id, Frame.processed_at), f, detection_filter).distinct()
              .order_by(Frame.processed_at.desc(), Frame.id.desc()).limit(f.limit).subquery())
    query = (select(Frame, Camera.name, DetectionRow, Alarm, ModelRecord.verification)
             .join(newest, newest.c.id == Frame.id)
             .join(Camera, Camera.id == Frame.camera_id)
             .outerjoin(DetectionRow, DetectionRow.frame_id == Frame.id)
             .outerjoin(Alarm, Alarm.frame_id == Frame.id)
             .outerjoin(ModelRecord, ModelRecord.id == Frame.model_id))
    if f.cls:
        query = query.where(DetectionRow.class_name == f.cls)
    if f.min_score is not None:
        query = query.where(DetectionRow.score >= f.min_score)
    query = query.order_by(Frame.processed_at.desc(), Frame.id.desc(), DetectionRow.score.desc(), DetectionRow.id)
    found = db.execute(query).all()
    states = review_states(db, list({frame.id: frame for frame, *_ in found}.values()))
    rows = []
    for frame, camera, det, alarm, verification in found:
        state = states[frame.id]
        verdict = state.detections[det.id] if det else None
        rows.append(HistoryRow(
            frame.id, _shown(frame.processed_at, zone), _shown(frame.captured_at, zone), camera,  # type: ignore[arg-type]
            frame.position, frame.serial, frame.name, frame.status, alarm.severity if alarm else None,
            alarm.session_id if alarm else None, alarm.seq if alarm else None, det.class_name if det else None,
            round(det.score, 4) if det else None,
            f"{det.x1:.0f},{det.y1:.0f},{det.x2:.0f},{det.y2:.0f}" if det else None, frame.reason_code,
            frame.reason, state.state, None if verdict is None else
            (f"wrong_class:{verdict.class_name}" if verdict.state == "wrong_class" else verdict.state),
            verification))
    return rows


def query_review_events(db: Session, f: HistoryFilter, zone: tzinfo = timezone.utc) -> list[dict[str, object]]:
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
    return [{"event": e.id, "at": _shown(e.created_at, zone), "reviewer": e.reviewer,
             "frame_id": e.frame_id, "camera": camera, "frame": name, "detection_id": e.detection_id,
             "action": e.action, "class": e.class_name, "target_event": e.target_event_id,
             "box": None if e.x1 is None else f"{e.x1:.0f},{e.y1:.0f},{e.x2:.0f},{e.y2:.0f}", "comment": e.comment}
            for e, name, camera in db.execute(query)]


def summary_per_class(db: Session, f: HistoryFilter) -> list[dict[str, object]]:
    query = _filtered(select(DetectionRow.class_name, func.count(DetectionRow.id),
                             func.count(func.distinct(Frame.id)), func.max(DetectionRow.score)), f, True)
    query = query.where(DetectionRow.id.is_not(None)).group_by(DetectionRow.class_name).order_by(DetectionRow.class_name)
    return [{"class": c, "detections": n, "frames": nf, "max_score": round(m, 4)} for c, n, nf, m in db.execute(query)]


def summary_per_day(db: Session, f: HistoryFilter, zone: tzinfo = timezone.utc) -> list[dict[str, object]]:
    """Frames per day (in ``zone``) and status (dates computed in Python: portable across SQLite and PostgreSQL)."""
    counts: dict[tuple[str, str], int] = {}
    query = _filtered(select(Frame.id, Frame.processed_at, Frame.status), f, bool(f.cls or f.min_score is not None))
    if f.cls or f.min_score is not None:
        query = query.distinct()
    for _, when, status in db.execute(query):
        key = (when.astimezone(zone).date().isoformat(), status)
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
