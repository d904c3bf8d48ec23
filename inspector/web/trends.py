"""Trend figures of the review page: defects per hour per class, false-call rate per day, per-position heat map.

Aggregated in SQL (hour/day buckets in UTC, SQLite and PostgreSQL spellings) over the list's filters (time
windows as id ranges, like the list), and laid out here as plain numbers for the server-rendered SVG (no
JavaScript charting, no CDN).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

from sqlalchemy import ColumnElement, case, func, select
from sqlalchemy.orm import Session

from inspector.db.models import Camera, DetectionRow, Frame, FrameReview, Template
from inspector.web.listing import ListFilter, filtered

PALETTE = ("#e4572e", "#17bebb", "#ffc914", "#76b041", "#8e6ccf", "#f28bb4", "#4d9de0", "#a0a0a0")


def bucket(db: Session, column, unit: str) -> ColumnElement:
    """``column`` truncated to the UTC hour/day as text 'YYYY-MM-DD HH:00' / 'YYYY-MM-DD'."""
    if db.get_bind().dialect.name == "postgresql":
        utc = func.timezone("UTC", column)
        return func.to_char(func.date_trunc(unit, utc), "YYYY-MM-DD HH24:00" if unit == "hour" else "YYYY-MM-DD")
    return func.strftime("%Y-%m-%d %H:00" if unit == "hour" else "%Y-%m-%d", column)


def window(f: ListFilter, default: timedelta, now: datetime | None = None) -> ListFilter:
    """The filter with a time range: the given one, or the last ``default``."""
    if f.since is not None:
        return f
    until = f.until or (now or datetime.now(timezone.utc))
    return ListFilter(**{**f.__dict__, "since": until - default, "until": until})


@dataclass
class Series:
    name: str
    color: str
    values: list[float]


@dataclass
class Chart:
    labels: list[str]
    series: list[Series] = field(default_factory=list)

    @property
    def peak(self) -> float:
        totals = [sum(s.values[i] for s in self.series) for i in range(len(self.labels))]
        return max(totals, default=0.0)


def _labels(start: datetime, end: datetime, step: timedelta, fmt: str) -> list[str]:
    out, t = [], start
    while t < end:
        out.append(t.strftime(fmt))
        t += step
    return out


def defects_per_hour(db: Session, f: ListFilter, hours: int = 48) -> Chart:
    f = window(f, timedelta(hours=hours))
    hour = bucket(db, Frame.processed_at, "hour")
    query = filtered(db, f, select(hour, DetectionRow.class_name, func.count(DetectionRow.id))
                     .select_from(Frame).join(DetectionRow, DetectionRow.frame_id == Frame.id))
    counts: dict[str, dict[str, int]] = {}
    for label, cls, n in db.execute(query.group_by(hour, DetectionRow.class_name)):
        counts.setdefault(cls, {})[label] = n
    start = f.since.replace(minute=0, second=0, microsecond=0)  # type: ignore[union-attr]
    labels = _labels(start, f.until, timedelta(hours=1), "%Y-%m-%d %H:00")  # type: ignore[arg-type]
    chart = Chart(labels)
    for i, cls in enumerate(sorted(counts)):
        chart.series.append(Series(cls, PALETTE[i % len(PALETTE)], [counts[cls].get(x, 0) for x in labels]))
    return chart


@dataclass
class DayRate:
    day: str
    reviewed: int  # detections with a verdict
    false_calls: int

    @property
    def rate(self) -> float | None:
        return self.false_calls / self.reviewed if self.reviewed else None


def false_call_rate_per_day(db: Session, f: ListFilter, days: int = 30) -> list[DayRate]:
    """Per day the frames were inspected: false calls / detections reviewers gave a verdict. Driven from the
    (small) review summaries by their own ``processed_at`` index, frames joined by primary key for the filters."""
    f = window(f, timedelta(days=days))
    day = bucket(db, FrameReview.processed_at, "day")
    query = (select(day, func.sum(FrameReview.false_calls),
                    func.sum(FrameReview.confirmed + FrameReview.reclassified + FrameReview.false_calls))
             .where(FrameReview.processed_at >= f.since, FrameReview.processed_at < f.until))
    scope = replace(f, since=None, until=None)
    if scope != ListFilter():  # frame filters: join the frames by primary key (else the summaries suffice)
        query = filtered(db, scope, query.join(Frame, Frame.id == FrameReview.frame_id))
    found = {d: (int(fc or 0), int(n or 0)) for d, fc, n in db.execute(query.group_by(day))}
    start = f.since.replace(hour=0, minute=0, second=0, microsecond=0)  # type: ignore[union-attr]
    return [DayRate(d, found.get(d, (0, 0))[1], found.get(d, (0, 0))[0])
            for d in _labels(start, f.until, timedelta(days=1), "%Y-%m-%d")]  # type: ignore[arg-type]


@dataclass
class PositionRow:
    camera: str
    position: str
    frames: int
    defective: int
    per_class: dict[str, int]
    template: Template | None = None  # the active version, with the daemon's drift verdict (inspector.drift)

    @property
    def drifted(self) -> bool:
        return bool(self.template is not None and self.template.drifted)

    @property
    def defect_rate(self) -> float:
        return self.defective / self.frames if self.frames else 0.0


@dataclass
class HeatMap:
    classes: list[str]
    rows: list[PositionRow]

    @property
    def peak(self) -> int:
        return max((n for r in self.rows for n in r.per_class.values()), default=0)


def position_heatmap(db: Session, f: ListFilter, days: int = 1) -> HeatMap:
    """Detections per (camera, position) and class, with frames and defective frames per position."""
    f = window(f, timedelta(days=days))
    names = dict(db.execute(select(Camera.id, Camera.name)).all())
    frames_q = filtered(db, f, select(Frame.camera_id, Frame.position, func.count(Frame.id),
                                func.sum(case((Frame.status == "defective", 1), else_=0))))
    rows: dict[tuple[str, str], PositionRow] = {}
    for cam, pos, n, bad in db.execute(frames_q.group_by(Frame.camera_id, Frame.position)):
        if pos is not None:
            rows[(names[cam], pos)] = PositionRow(names[cam], pos, int(n), int(bad or 0), {})
    det_q = filtered(db, f, select(Frame.camera_id, Frame.position, DetectionRow.class_name, func.count(DetectionRow.id))
                     .select_from(Frame).join(DetectionRow, DetectionRow.frame_id == Frame.id))
    classes: set[str] = set()
    for cam, pos, cls, n in db.execute(det_q.group_by(Frame.camera_id, Frame.position, DetectionRow.class_name)):
        if (names[cam], pos) in rows:
            rows[(names[cam], pos)].per_class[cls] = int(n)
            classes.add(cls)
    for cam_id, template in active_templates(db).items():
        key = (names.get(cam_id[0]), cam_id[1])
        if key in rows:
            rows[key].template = template
    return HeatMap(sorted(classes), [rows[k] for k in sorted(rows)])


def active_templates(db: Session) -> dict[tuple[int, str], Template]:
    """(camera id, position) -> the active template version (a small table: one row per position)."""
    return {(t.camera_id, t.position): t for t in db.scalars(select(Template).where(Template.active.is_(True)))}


def drifted_positions(db: Session) -> list[tuple[str, str, Template]]:
    """(camera, position, template) of every position whose active template the daemon flags as drifted."""
    names = dict(db.execute(select(Camera.id, Camera.name)).all())
    return [(names[t.camera_id], t.position, t) for t in db.scalars(
        select(Template).where(Template.active.is_(True), Template.drifted.is_(True))
        .order_by(Template.camera_id, Template.position))]
