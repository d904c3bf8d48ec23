"""Initial results schema: stations, cameras, templates, models, frames, detections, bus sessions, alarms.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "stations",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "cameras",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("station_id", sa.String(64), sa.ForeignKey("stations.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("drop_folder", sa.Text),
        sa.UniqueConstraint("station_id", "name", name="uq_cameras_station_name"),
    )
    op.create_table(
        "templates",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("camera_id", sa.Integer, sa.ForeignKey("cameras.id", ondelete="CASCADE"), nullable=False),
        sa.Column("position", sa.String(128), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("source", sa.Text),
        sa.Column("width", sa.Integer, nullable=False),
        sa.Column("height", sa.Integer, nullable=False),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("camera_id", "position", "version", name="uq_templates_version"),
    )
    op.create_index("ix_templates_lookup", "templates", ["camera_id", "position", "active"])
    op.create_table(
        "models",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("backend", sa.String(32), nullable=False),
        sa.Column("precision", sa.String(16), nullable=False),
        sa.Column("path", sa.Text),
        sa.Column("class_names", sa.JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("sha256", "backend", name="uq_models_sha_backend"),
    )
    op.create_table(
        "frames",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("camera_id", sa.Integer, sa.ForeignKey("cameras.id", ondelete="CASCADE"), nullable=False),
        sa.Column("name", sa.Text, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("position", sa.String(128)),
        sa.Column("serial", sa.String(128)),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("source_path", sa.Text, nullable=False),
        sa.Column("stored_path", sa.Text),
        sa.Column("annotated_path", sa.Text),
        sa.Column("captured_at", TS),
        sa.Column("processed_at", TS, nullable=False),
        sa.Column("template_id", sa.Integer, sa.ForeignKey("templates.id", ondelete="SET NULL")),
        sa.Column("model_id", sa.Integer, sa.ForeignKey("models.id", ondelete="SET NULL")),
        sa.Column("shift_x", sa.Float),
        sa.Column("shift_y", sa.Float),
        sa.Column("align_response", sa.Float),
        sa.Column("latency_ms", sa.Float),
        sa.Column("stage_ms", sa.JSON),
        sa.UniqueConstraint("camera_id", "name", "sha256", name="uq_frames_identity"),
    )
    op.create_index("ix_frames_camera_position_time", "frames", ["camera_id", "position", "processed_at"])
    op.create_index("ix_frames_processed_at", "frames", ["processed_at"])
    op.create_index("ix_frames_status", "frames", ["status"])
    op.create_table(
        "detections",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("frame_id", sa.Integer, sa.ForeignKey("frames.id", ondelete="CASCADE"), nullable=False),
        sa.Column("class_id", sa.Integer, nullable=False),
        sa.Column("class_name", sa.String(128), nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("x1", sa.Float, nullable=False),
        sa.Column("y1", sa.Float, nullable=False),
        sa.Column("x2", sa.Float, nullable=False),
        sa.Column("y2", sa.Float, nullable=False),
    )
    op.create_index("ix_detections_class_score", "detections", ["class_name", "score"])
    op.create_index("ix_detections_frame", "detections", ["frame_id"])
    op.create_table(
        "bus_sessions",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("station_id", sa.String(64), sa.ForeignKey("stations.id", ondelete="CASCADE"), nullable=False),
        sa.Column("started_at", TS, nullable=False),
        sa.Column("stopped_at", TS),
        sa.Column("last_seq", sa.Integer, nullable=False),
    )
    op.create_table(
        "alarms",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("session_id", sa.String(36), sa.ForeignKey("bus_sessions.id", ondelete="CASCADE"), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("frame_id", sa.Integer, sa.ForeignKey("frames.id", ondelete="CASCADE"), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("session_id", "seq", name="uq_alarms_session_seq"),
    )
    op.create_index("ix_alarms_created", "alarms", ["created_at"])


def downgrade() -> None:
    for table in ("alarms", "bus_sessions", "detections", "frames", "models", "templates", "cameras", "stations"):
        op.drop_table(table)
