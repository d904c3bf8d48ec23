"""The review list: frames newest first, filtered, in keyset pages (no OFFSET: page 1000 costs what page 1 does).

Order is commit order, ``frames.id`` descending (the id is assigned when the result commits, and each daemon
takes ``processed_at`` inside its commit lock, so within a station id order is time order). A page's cursor is
its last id; the next page asks for ids below it: one primary-key range. Every filter is then either a column of
``frames`` covered by an (column, id) index (status, camera + position), or an ``id IN (subquery)`` over a small
indexed child table (detections by class, alarms by severity, frame_reviews by state) that the planner can
drive from when the value is rare. A time range becomes an id range: two index seeks on ``processed_at`` find
the first and last frame inside it (exact for one station; on a central database of several stations a frame
committed within clock skew of a boundary may fall on the other side). ``benchmarks/review_page.py`` measures
all of it on 1 million frames.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone

from sqlalchemy import Select, exists, false, func, select
from sqlalchemy.orm import Session

from inspector.db.models import Alarm, Camera, DetectionRow, Frame, FrameReview, ModelRecord, Station, Template
from inspector.review import FRAME_STATES

STATUSES = ("ok", "defective", "quarantined")
SEVERITIES = ("info", "warning", "critical")
KINDS = ("alarms", "defective", "all")  # the list's tabs: frames with an alarm, with a detection, everything
MAX_PAGE = 200


class ListError(ValueError):
    """A filter value that cannot be used (named in the message)."""


def as_utc(value: datetime) -> datetime:
    """Timestamps are stored as UTC; naive values (SQLite returns them) are UTC."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


@dataclass(frozen=True)
class ListFilter:
    kind: str = "all"
    station: str | None = None
    camera: str | None = None
    position: str | None = None
    cls: str | None = None
    severity: str | None = None
    status: str | None = None
    review: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        for name, allowed in (("kind", KINDS), ("severity", SEVERITIES), ("status", STATUSES),
                              ("review", FRAME_STATES)):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ListError(f"{name}: {value!r} is not one of {', '.join(allowed)}")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, as_utc(value))

    def query_args(self) -> dict[str, str]:
        """The filter as URL query arguments (links, CSV export, the live view's refresh)."""
        out = {}
        for name in ("kind", "station", "camera", "position", "cls", "severity", "status", "review"):
            value = getattr(self, name)
            if value and not (name == "kind" and value == "all"):
                out["class" if name == "cls" else name] = value
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value.isoformat(timespec="minutes")
        return out


def decode_cursor(cursor: str) -> int:
    """A page cursor is the id of the last row of the previous page."""
    if not cursor.isdigit() or len(cursor) > 18:
        raise ListError("cursor: not a page cursor of this list")
    return int(cursor)


@dataclass
class ListRow:
    frame: Frame
    camera: str
    station: str
    severity: str | None
    review: FrameReview | None

    @property
    def review_state(self) -> str:
        return self.review.state if self.review is not None else "unreviewed"


@dataclass
class Page:
    rows: list[ListRow] = field(default_factory=list)
    next_cursor: str | None = None


def _camera_ids(db: Session, f: ListFilter) -> list[int] | None:
    """Camera ids the station/camera filters allow (None: no restriction)."""
    if not f.station and not f.camera:
        return None
    query = select(Camera.id)
    if f.station:
        query = query.where(Camera.station_id == f.station)
    if f.camera:
        query = query.where(Camera.name == f.camera)
    return list(db.scalars(query))


def id_range(db: Session, f: ListFilter) -> tuple[int | None, int | None] | None:
    """The [first, last] frame ids of the filter's time range (None ends: open); None when no frame lies in it."""
    lo = hi = None
    if f.since is not None:
        lo = db.scalar(select(Frame.id).where(Frame.processed_at >= f.since)
                       .order_by(Frame.processed_at, Frame.id).limit(1))
        if lo is None:
            return None
    if f.until is not None:
        hi = db.scalar(select(Frame.id).where(Frame.processed_at < f.until)
                       .order_by(Frame.processed_at.desc(), Frame.id.desc()).limit(1))
        if hi is None or (lo is not None and hi < lo):
            return None
    return lo, hi


def filtered(db: Session, f: ListFilter, query: Select, *, lo: int | None = None, hi: int | None = None) -> Select:
    """``query`` (over frames) with every filter applied (the time range as an id range, see the module doc),
    restricted to ids in [lo, hi) when given; the bounds go into the child-table subqueries too, so each reads
    only its own index range."""
    if f.since or f.until:
        bounds = id_range(db, f)
        if bounds is None:
            return query.where(false())
        if bounds[0] is not None:
            lo = bounds[0] if lo is None else max(lo, bounds[0])
        if bounds[1] is not None:
            hi = bounds[1] + 1 if hi is None else min(hi, bounds[1] + 1)

    def bounded(sub: Select, column) -> Select:
        if lo is not None:
            sub = sub.where(column >= lo)
        if hi is not None:
            sub = sub.where(column < hi)
        return sub

    query = bounded(query, Frame.id)
    cameras = _camera_ids(db, f)
    if cameras is not None:
        if len(cameras) == 1:
            query = query.where(Frame.camera_id == cameras[0])
        else:
            query = query.where(Frame.camera_id.in_(cameras or [-1]))
    if f.position:
        query = query.where(Frame.position == f.position)
    status = f.status or ("defective" if f.kind == "defective" else None)
    if status:
        query = query.where(Frame.status == status)
    if f.kind == "alarms" or f.severity:
        alarms = select(Alarm.frame_id)
        if f.severity:
            alarms = alarms.where(Alarm.severity == f.severity)
        query = query.where(Frame.id.in_(bounded(alarms, Alarm.frame_id)))
    if f.cls:
        query = query.where(Frame.id.in_(bounded(select(DetectionRow.frame_id).where(DetectionRow.class_name == f.cls),
                                                 DetectionRow.frame_id)))
    if f.review == "unreviewed":
        query = query.where(~exists(select(FrameReview.frame_id).where(FrameReview.frame_id == Frame.id)))
    elif f.review:
        query = query.where(Frame.id.in_(bounded(select(FrameReview.frame_id).where(FrameReview.state == f.review),
                                                 FrameReview.frame_id)))
    return query


def uses_child_tables(f: ListFilter) -> bool:
    return bool(f.kind == "alarms" or f.severity or f.cls or (f.review and f.review != "unreviewed"))


FIRST_WINDOW = 4096  # ids; each further window is 4x wider


def page(db: Session, f: ListFilter, cursor: str | None = None, limit: int = 50,
         newer_than: int | None = None) -> Page:
    """One page of the list. ``newer_than``: only frames with a larger id (the live view's refresh).

    With a child-table filter the page is collected over id windows below the cursor, each 4x wider than the
    last: a common value fills the page from the first window, a rare one reaches back in a few steps; every
    step reads index ranges proportional to its matches, never a whole table."""
    limit = max(1, min(limit, MAX_PAGE))
    top = decode_cursor(cursor) if cursor else None
    floor = newer_than + 1 if newer_than is not None else None
    want = limit + 1
    if not uses_child_tables(f):
        frames = list(db.scalars(filtered(db, f, select(Frame), lo=floor, hi=top).order_by(Frame.id.desc())
                                 .limit(want)))
    else:
        frames = []
        hi = top if top is not None else (db.scalar(select(func.max(Frame.id))) or 0) + 1
        bounds = id_range(db, f) if (f.since or f.until) else (None, None)
        bottom = max(b for b in (floor, bounds[0] if bounds else None, 1) if b is not None)
        if bounds is not None and bounds[1] is not None:
            hi = min(hi, bounds[1] + 1)
        width = FIRST_WINDOW
        timeless = replace(f, since=None, until=None)  # the time range is in the id bounds already
        while bounds is not None and len(frames) < want and hi > bottom:
            lo = max(bottom, hi - width)
            frames += db.scalars(filtered(db, timeless, select(Frame), lo=lo, hi=hi)
                                 .order_by(Frame.id.desc()).limit(want - len(frames)))
            hi, width = lo, width * 4
    more = len(frames) > limit
    frames = frames[:limit]
    result = Page(rows=decorate(db, frames))
    if more and frames:
        result.next_cursor = str(frames[-1].id)
    return result


def decorate(db: Session, frames: list[Frame]) -> list[ListRow]:
    """Camera, station, worst alarm severity and review summary for each frame (three small IN queries)."""
    if not frames:
        return []
    ids = [fr.id for fr in frames]
    cameras = {c.id: c for c in db.scalars(select(Camera).where(Camera.id.in_({fr.camera_id for fr in frames})))}
    severity: dict[int, str] = {}
    for frame_id, sev in db.execute(select(Alarm.frame_id, Alarm.severity).where(Alarm.frame_id.in_(ids))):
        if SEVERITIES.index(sev) >= SEVERITIES.index(severity.get(frame_id, "info")):
            severity[frame_id] = sev
    reviews = {r.frame_id: r for r in db.scalars(select(FrameReview).where(FrameReview.frame_id.in_(ids)))}
    return [ListRow(fr, cameras[fr.camera_id].name, cameras[fr.camera_id].station_id, severity.get(fr.id),
                    reviews.get(fr.id)) for fr in frames]


BADGE_WINDOW = timedelta(hours=24)


def counts(db: Session, f: ListFilter, now: datetime | None = None) -> dict[str, int]:
    """Unreviewed alarms and defective frames (the tab badges) under the station/camera/position filters, in the
    filter's time range or else the last 24 hours (as Frigate's review page counts a day)."""
    since = f.since or (now or datetime.now(timezone.utc)) - BADGE_WINDOW
    out = {}
    for kind in KINDS[:2]:
        scoped = ListFilter(kind=kind, station=f.station, camera=f.camera, position=f.position, since=since,
                            until=f.until, review="unreviewed")
        out[kind] = int(db.scalar(filtered(db, scoped, select(func.count(Frame.id)))) or 0)
    return out


FACET_RECENT_FRAMES = 5000


def facets(db: Session) -> dict[str, list[str]]:
    """Values the filter menus offer, from the small tables (never a DISTINCT over a million frames): stations,
    cameras, positions (templates, and the most recent frames for detectors without one), classes (models)."""
    recent = select(Frame.position).order_by(Frame.id.desc()).limit(FACET_RECENT_FRAMES).subquery()
    positions = set(db.scalars(select(Template.position).distinct())) | set(db.scalars(select(recent.c.position)))
    classes = {name for names in db.scalars(select(ModelRecord.class_names)) for name in (names or [])}
    return {
        "stations": list(db.scalars(select(Station.id).order_by(Station.id))),
        "cameras": sorted(set(db.scalars(select(Camera.name)))),
        "positions": sorted(p for p in positions if p),
        "classes": sorted(classes),
    }
