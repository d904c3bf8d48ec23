"""Results database schema (SQLAlchemy 2 typed ORM). The Alembic migrations in ``inspector/migrations`` create
exactly this; ``tests/inspector/test_db.py`` checks the two never drift apart.

Idempotency lives in the schema: a frame is unique on (camera, name, sha256), so whatever restarts happen one
frame gives one result row. Results and alarms are unique on (session, seq): the gap-free sequences the bus
promises. Times are ``UtcDateTime``: aware UTC whatever the database.
"""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, TypeDecorator,
                        UniqueConstraint, false)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from inspector.naming import MAX_POSITION_LEN, MAX_SERIAL_LEN


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UtcDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that is aware UTC on both databases: stored as UTC (an aware value in another
    zone is converted; a naive one is taken as UTC) and read back aware (SQLite keeps no zone and returns naive
    values; PostgreSQL returns them in the session's zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    pass


class Station(Base):
    __tablename__ = "stations"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Camera(Base):
    __tablename__ = "cameras"
    __table_args__ = (UniqueConstraint("station_id", "name", name="uq_cameras_station_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    station_id: Mapped[str] = mapped_column(ForeignKey("stations.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    drop_folder: Mapped[str | None] = mapped_column(Text)


class Template(Base):
    """One version of the reference image of (camera, position); exactly one active version per position."""

    __tablename__ = "templates"
    __table_args__ = (
        UniqueConstraint("camera_id", "position", "version", name="uq_templates_version"),
        Index("ix_templates_lookup", "camera_id", "position", "active"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    camera_id: Mapped[int] = mapped_column(ForeignKey("cameras.id", ondelete="CASCADE"))
    position: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    source: Mapped[str | None] = mapped_column(Text)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    # How this version was made: {"method": "median" | "frame" | "file" | "array", "frames": [frame ids], ...}
    provenance: Mapped[dict | None] = mapped_column(JSON)
    # The daemon's rolling view of how well frames still match this version (``inspector.drift``): median
    # alignment residual of its first frames (baseline) and of the latest ones, and the drift verdict.
    residual_baseline: Mapped[float | None] = mapped_column(Float)
    residual_recent: Mapped[float | None] = mapped_column(Float)
    residual_frames: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    drifted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    drift_updated_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class ModelRecord(Base):
    """A deployed model. ``verification``: signature | sha256 | unverified | config (migration 0004 explains);
    part of the identity, so frames inspected by an unchecked model say so."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("sha256", "backend", "verification", name="uq_models_sha_backend_verification"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sha256: Mapped[str] = mapped_column(String(64))
    backend: Mapped[str] = mapped_column(String(32))
    precision: Mapped[str] = mapped_column(String(16))
    verification: Mapped[str] = mapped_column(String(16), server_default="sha256")
    path: Mapped[str | None] = mapped_column(Text)
    class_names: Mapped[list[str]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class Frame(Base):
    """One input file's result. ``status``: ok | defective | quarantined (then ``reason_code`` says why)."""

    __tablename__ = "frames"
    __table_args__ = (
        UniqueConstraint("camera_id", "name", "sha256", name="uq_frames_identity"),
        Index("ix_frames_camera_position_time", "camera_id", "position", "processed_at"),
        Index("ix_frames_processed_at", "processed_at"),
        Index("ix_frames_status_id", "status", "id"),  # keyset pages of the review list (commit order)
        Index("ix_frames_camera_id", "camera_id", "id"),
        Index("ix_frames_camera_position_id", "camera_id", "position", "id"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    camera_id: Mapped[int] = mapped_column(ForeignKey("cameras.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(Text)  # printable: undecodable bytes of the file name as \xNN
    sha256: Mapped[str | None] = mapped_column(String(64))  # None: the content was never read (link, FIFO, ...)
    position: Mapped[str | None] = mapped_column(String(MAX_POSITION_LEN))
    serial: Mapped[str | None] = mapped_column(String(MAX_SERIAL_LEN))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    reason_code: Mapped[str | None] = mapped_column(String(32))  # quarantined: inspector.quarantine.QuarantineReason
    source_path: Mapped[str] = mapped_column(Text)
    stored_path: Mapped[str | None] = mapped_column(Text)
    annotated_path: Mapped[str | None] = mapped_column(Text)
    captured_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    processed_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    template_id: Mapped[int | None] = mapped_column(ForeignKey("templates.id", ondelete="SET NULL"))
    model_id: Mapped[int | None] = mapped_column(ForeignKey("models.id", ondelete="SET NULL"))
    shift_x: Mapped[float | None] = mapped_column(Float)
    shift_y: Mapped[float | None] = mapped_column(Float)
    align_response: Mapped[float | None] = mapped_column(Float)
    # mean |frame - aligned template| in grey levels, outside detections and the band the shift left uncovered
    align_residual: Mapped[float | None] = mapped_column(Float)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    stage_ms: Mapped[dict[str, float] | None] = mapped_column(JSON)
    detections: Mapped[list["DetectionRow"]] = relationship(back_populates="frame", cascade="all, delete-orphan",
                                                            lazy="selectin")


class DetectionRow(Base):
    __tablename__ = "detections"
    __table_args__ = (Index("ix_detections_class_score", "class_name", "score"),
                      Index("ix_detections_class_frame", "class_name", "frame_id"),
                      Index("ix_detections_frame", "frame_id"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    frame_id: Mapped[int] = mapped_column(ForeignKey("frames.id", ondelete="CASCADE"))
    class_id: Mapped[int] = mapped_column(Integer)
    class_name: Mapped[str] = mapped_column(String(128))
    score: Mapped[float] = mapped_column(Float)
    x1: Mapped[float] = mapped_column(Float)
    y1: Mapped[float] = mapped_column(Float)
    x2: Mapped[float] = mapped_column(Float)
    y2: Mapped[float] = mapped_column(Float)
    frame: Mapped[Frame] = relationship(back_populates="detections")


class BusSession(Base):
    """One run of the daemon; its results and its alarms each carry a gap-free sequence 1, 2, 3, ..."""

    __tablename__ = "bus_sessions"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    station_id: Mapped[str] = mapped_column(ForeignKey("stations.id", ondelete="CASCADE"))
    started_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_seq: Mapped[int] = mapped_column(Integer, default=0)  # last alarm seq
    last_result_seq: Mapped[int] = mapped_column(Integer, default=0)


class Alarm(Base):
    """``state``: raised (committed) -> published (sent on the PUB socket). ``payload`` is the exact JSON
    sent, so a replay is byte-identical to the live message."""

    __tablename__ = "alarms"
    __table_args__ = (UniqueConstraint("session_id", "seq", name="uq_alarms_session_seq"),
                      Index("ix_alarms_created", "created_at"),
                      Index("ix_alarms_frame", "frame_id", "severity"),
                      Index("ix_alarms_severity_frame", "severity", "frame_id"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("bus_sessions.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    frame_id: Mapped[int] = mapped_column(ForeignKey("frames.id", ondelete="CASCADE"))
    severity: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default="raised")
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class ReviewEvent(Base):
    """One reviewer decision, append-only (a trigger refuses UPDATE): the current review state of a frame is
    derived from its events (``inspector.review``), so every earlier decision stays in the history.

    ``action`` on a detection (``detection_id`` set): ``confirm`` | ``false_call`` | ``wrong_class`` (with
    ``class_name``). On the frame (``detection_id`` null): ``confirm`` / ``false_call`` (a verdict on all its
    detections), ``missed`` (a defect the detector did not report: ``class_name`` and box ``x1..y2`` in frame
    pixels), ``retract`` (withdraws the ``missed`` event ``target_event_id``, e.g. a badly drawn box)."""

    __tablename__ = "review_events"
    __table_args__ = (Index("ix_review_events_frame", "frame_id", "id"),
                      Index("ix_review_events_created", "created_at"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    frame_id: Mapped[int] = mapped_column(ForeignKey("frames.id", ondelete="CASCADE"))
    detection_id: Mapped[int | None] = mapped_column(ForeignKey("detections.id", ondelete="CASCADE"))
    target_event_id: Mapped[int | None] = mapped_column(ForeignKey("review_events.id", ondelete="CASCADE"))
    action: Mapped[str] = mapped_column(String(16))
    class_name: Mapped[str | None] = mapped_column(String(128))
    x1: Mapped[float | None] = mapped_column(Float)
    y1: Mapped[float | None] = mapped_column(Float)
    x2: Mapped[float | None] = mapped_column(Float)
    y2: Mapped[float | None] = mapped_column(Float)
    reviewer: Mapped[str] = mapped_column(String(128))
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class FrameReview(Base):
    """The current review state of one frame, recomputed from its ``review_events`` in the transaction that
    appends an event (never edited otherwise; ``inspector.review.rebuild_frame_reviews`` re-derives all rows).
    No row: unreviewed. ``state``: partial | confirmed | false_call | corrected. ``processed_at`` repeats the
    frame's so per-day review figures (false-call rate) read this table's own index."""

    __tablename__ = "frame_reviews"
    __table_args__ = (Index("ix_frame_reviews_state", "state", "frame_id"),
                      Index("ix_frame_reviews_time", "processed_at", "frame_id"))
    frame_id: Mapped[int] = mapped_column(ForeignKey("frames.id", ondelete="CASCADE"), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    processed_at: Mapped[datetime] = mapped_column(UtcDateTime)
    confirmed: Mapped[int] = mapped_column(Integer, default=0)
    false_calls: Mapped[int] = mapped_column(Integer, default=0)
    reclassified: Mapped[int] = mapped_column(Integer, default=0)
    missed: Mapped[int] = mapped_column(Integer, default=0)
    pending: Mapped[int] = mapped_column(Integer, default=0)
    events: Mapped[int] = mapped_column(Integer, default=0)
    last_reviewer: Mapped[str] = mapped_column(String(128))
    reviewed_at: Mapped[datetime] = mapped_column(UtcDateTime)


class ResultRow(Base):
    """One committed frame result: ``payload`` is the exact ``result.<station>.<camera>`` message (a
    :class:`inspector.outputs.result.FrameResult` as JSON), so every output and every replay say the same."""

    __tablename__ = "results"
    __table_args__ = (UniqueConstraint("session_id", "seq", name="uq_results_session_seq"),
                      Index("ix_results_frame", "frame_id"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(ForeignKey("bus_sessions.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    frame_id: Mapped[int] = mapped_column(ForeignKey("frames.id", ondelete="CASCADE"))
    verdict: Mapped[str] = mapped_column(String(16))
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
