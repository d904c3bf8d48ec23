"""Template drift: does the active template of a position still explain its frames?

Every inspected frame gets an alignment residual (``inspector.align.alignment_residual``: mean |frame - aligned
template| in grey levels outside its detections). A template that no longer matches the line (new board
revision, lighting or focus change, a fixture that tilts rather than shifts) shows up as a rising residual long
before it shows up as a flood of false calls. Per (camera, position) and template version this module keeps

- the **baseline**: median residual of the first ``window`` frames inspected against the version, and
- the **recent** level: median residual of the latest ``window`` frames,

and calls the position *drifted* when, with at least ``min_frames`` recent frames, the recent level exceeds
``max_residual`` (absolute, grey levels) or exceeds ``max_ratio`` x baseline by at least ``min_increase`` grey
levels (relative: cameras differ in noise, so the ratio is what travels between stations). Medians, because a
frame with an undetected defect or a bad capture must not flip the verdict.

The verdict goes to Prometheus at once (``rddn_template_residual`` / ``rddn_template_drifted``, labels camera
and position) and into the version's ``templates`` row (``residual_baseline``, ``residual_recent``,
``residual_frames``, ``drifted``, ``drift_updated_at``) every ``persist_s`` and at each change of verdict: what
the review page and ``inspector templates list`` show. A new template version starts a new baseline.

After a restart the windows are re-read from the frames table (two index range scans per position, once).
"""
from __future__ import annotations

import logging
import math
import statistics
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from inspector.db.models import Frame, Template
from inspector.db.writer import Transactions

log = logging.getLogger("inspector.drift")


class DriftConfig(BaseModel):
    """The ``templates.drift`` section of a station config."""

    model_config = ConfigDict(extra="forbid")

    window: int = Field(50, ge=3, le=10_000)  # frames in the baseline and in the rolling recent median
    min_frames: int = Field(20, ge=1)  # no verdict before this many frames in both windows
    max_residual: float | None = Field(None, gt=0)  # absolute limit on the recent median (grey levels); null = off
    max_ratio: float | None = Field(1.5, gt=1)  # recent / baseline limit; null = off
    min_increase: float = Field(2.0, ge=0)  # ... and recent - baseline at least this (a clean camera's 0.5 -> 0.8
    #                                          is a ratio of 1.6 but no drift)
    persist_s: float = Field(10.0, gt=0)  # how often the state is written to the templates table

    @model_validator(mode="after")
    def _min_within_window(self) -> "DriftConfig":
        if self.min_frames > self.window:
            raise ValueError(f"templates.drift.min_frames ({self.min_frames}) must not exceed window ({self.window})")
        return self

    def assess(self, baseline: float | None, baseline_n: int, recent: float | None, recent_n: int) -> bool:
        """The drift rule (see the module docstring)."""
        if recent is None or recent_n < self.min_frames:
            return False
        if self.max_residual is not None and recent > self.max_residual:
            return True
        return (self.max_ratio is not None and baseline is not None and baseline_n >= self.min_frames
                and recent > baseline * self.max_ratio and recent - baseline >= self.min_increase)


@dataclass(frozen=True)
class DriftState:
    camera: str
    position: str
    template_id: int
    version: int | None  # the template version (None if its row is gone)
    frames: int  # frames measured against this version (persisted count + this run's)
    baseline: float | None
    recent: float | None
    drifted: bool


@dataclass
class _Position:
    template_id: int
    version: int | None
    frames: int
    baseline: list[float]
    recent: deque[float]
    drifted: bool = False
    dirty: bool = True
    changed: bool = False  # verdict flipped since the last persist: write at the next opportunity
    persisted_at: float = field(default_factory=time.monotonic)
    baseline_median: float | None = None  # cached: the baseline stops changing once it has ``window`` values

    def medians(self) -> tuple[float | None, float | None]:
        return self.baseline_median, statistics.median(self.recent) if self.recent else None


UpdateHook = Callable[[DriftState], None]


class DriftTracker:
    """Per-position rolling residuals of one daemon; ``observe`` from the commit thread, ``persist`` from the
    supervisor, ``states`` from anywhere."""

    def __init__(self, cfg: DriftConfig, factory: sessionmaker[Session], camera_ids: dict[str, int],
                 on_update: UpdateHook | None = None, writer: Transactions | None = None) -> None:
        self.cfg = cfg
        self.factory = factory  # reads
        self.writer = writer or factory  # the persisted states: the daemon passes its one DbWriter
        self.camera_ids = camera_ids
        self.on_update = on_update
        self._positions: dict[tuple[str, str], _Position] = {}
        self._lock = threading.Lock()

    def _seed(self, camera: str, position: str, template_id: int, frame_id: int | None) -> _Position:
        """Windows of a version from the database: what this and earlier runs measured against it (without
        ``frame_id``, the frame being observed: already committed, it is added by the caller)."""
        n = self.cfg.window
        with self.factory() as db:
            row = db.get(Template, template_id)
            created = row.created_at if row is not None else None
            base = (select(Frame.align_residual)
                    .where(Frame.camera_id == self.camera_ids[camera], Frame.position == position,
                           Frame.template_id == template_id, Frame.align_residual.is_not(None)))
            if created is not None:
                base = base.where(Frame.processed_at >= created)
            if frame_id is not None:
                base = base.where(Frame.id != frame_id)
            first = list(db.scalars(base.order_by(Frame.processed_at, Frame.id).limit(n)))
            last = list(db.scalars(base.order_by(Frame.processed_at.desc(), Frame.id.desc()).limit(n)))
        frames = max(row.residual_frames if row is not None else 0, len(first))
        return _Position(template_id, row.version if row is not None else None, frames, first,
                         deque(reversed(last), maxlen=n), drifted=bool(row.drifted) if row is not None else False,
                         dirty=False, baseline_median=statistics.median(first) if first else None)

    def observe(self, camera: str, position: str, template_id: int | None, residual: float | None,
                frame_id: int | None = None) -> DriftState | None:
        """Add one (committed) frame's residual; returns the position's state (None: nothing to track)."""
        if template_id is None or residual is None or not math.isfinite(residual):
            return None
        key = (camera, position)
        with self._lock:
            pos = self._positions.get(key)
        if pos is None or pos.template_id != template_id:
            pos = self._seed(camera, position, template_id, frame_id)  # outside the lock: a DB read
        with self._lock:
            current = self._positions.get(key)
            if current is not None and current.template_id == template_id and current is not pos:
                pos = current  # another thread seeded it meanwhile
            self._positions[key] = pos
            pos.frames += 1
            if len(pos.baseline) < self.cfg.window:
                pos.baseline.append(residual)
                pos.baseline_median = statistics.median(pos.baseline)
            pos.recent.append(residual)
            baseline, recent = pos.medians()
            drifted = self.cfg.assess(baseline, len(pos.baseline), recent, len(pos.recent))
            flipped = drifted != pos.drifted
            pos.drifted, pos.dirty = drifted, True
            pos.changed = pos.changed or flipped
            state = DriftState(camera, position, template_id, pos.version, pos.frames, baseline, recent, drifted)
        if flipped:
            (log.warning if drifted else log.info)(
                "template drift" if drifted else "template drift cleared", extra={"fields": {
                    "camera": camera, "position": position, "template_id": template_id,
                    "recent_residual": round(recent or 0.0, 3),
                    "baseline_residual": round(baseline, 3) if baseline is not None else None}})
        if self.on_update is not None:
            self.on_update(state)
        return state

    def states(self) -> list[DriftState]:
        with self._lock:
            out = []
            for (camera, position), pos in sorted(self._positions.items()):
                baseline, recent = pos.medians()
                out.append(DriftState(camera, position, pos.template_id, pos.version, pos.frames, baseline, recent,
                                      pos.drifted))
        return out

    def persist(self, force: bool = False) -> int:
        """Write the states that changed into their template rows: every ``persist_s``, at once after a flip of
        the verdict, or everything dirty with ``force`` (shutdown). Returns the number of rows written."""
        now = time.monotonic()
        with self._lock:
            due = [(key, pos) for key, pos in self._positions.items()
                   if pos.dirty and (force or pos.changed or now - pos.persisted_at >= self.cfg.persist_s)]
            rows, flips = [], [pos.changed for _, pos in due]
            for _, pos in due:
                baseline, recent = pos.medians()
                rows.append((pos.template_id, baseline, recent, pos.frames, pos.drifted))
                pos.dirty = pos.changed = False
                pos.persisted_at = now
        if not rows:
            return 0
        stamp = datetime.now(timezone.utc)
        try:
            with self.writer.begin() as db:
                for template_id, baseline, recent, frames, drifted in rows:
                    db.execute(update(Template).where(Template.id == template_id).values(
                        residual_baseline=baseline, residual_recent=recent, residual_frames=frames, drifted=drifted,
                        drift_updated_at=stamp))
        except Exception:
            with self._lock:  # not written: try again next time
                for (_, pos), flipped in zip(due, flips):
                    pos.dirty, pos.changed = True, pos.changed or flipped
            raise
        return len(rows)
