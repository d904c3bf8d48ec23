"""Reviews: append-only review events, the derived per-frame review state, indexes for the review page's pages.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)
APPEND_ONLY = "review_events is append-only: a decision is changed by a new event, never by editing one"


def upgrade() -> None:
    op.create_table(
        "review_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("frame_id", sa.Integer, sa.ForeignKey("frames.id", ondelete="CASCADE"), nullable=False),
        sa.Column("detection_id", sa.Integer, sa.ForeignKey("detections.id", ondelete="CASCADE")),
        sa.Column("target_event_id", sa.Integer, sa.ForeignKey("review_events.id", ondelete="CASCADE")),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("class_name", sa.String(128)),
        sa.Column("x1", sa.Float),
        sa.Column("y1", sa.Float),
        sa.Column("x2", sa.Float),
        sa.Column("y2", sa.Float),
        sa.Column("reviewer", sa.String(128), nullable=False),
        sa.Column("comment", sa.Text),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_review_events_frame", "review_events", ["frame_id", "id"])
    op.create_index("ix_review_events_created", "review_events", ["created_at"])
    op.create_table(
        "frame_reviews",
        sa.Column("frame_id", sa.Integer, sa.ForeignKey("frames.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("processed_at", TS, nullable=False),
        sa.Column("confirmed", sa.Integer, nullable=False),
        sa.Column("false_calls", sa.Integer, nullable=False),
        sa.Column("reclassified", sa.Integer, nullable=False),
        sa.Column("missed", sa.Integer, nullable=False),
        sa.Column("pending", sa.Integer, nullable=False),
        sa.Column("events", sa.Integer, nullable=False),
        sa.Column("last_reviewer", sa.String(128), nullable=False),
        sa.Column("reviewed_at", TS, nullable=False),
    )
    op.create_index("ix_frame_reviews_state_time", "frame_reviews", ["state", "processed_at", "frame_id"])
    op.create_index("ix_frame_reviews_time", "frame_reviews", ["processed_at", "frame_id"])
    op.create_index("ix_frames_status_time", "frames", ["status", "processed_at", "id"])
    op.create_index("ix_frames_camera_time", "frames", ["camera_id", "processed_at", "id"])
    op.create_index("ix_alarms_frame", "alarms", ["frame_id", "severity"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"""CREATE FUNCTION review_events_append_only() RETURNS trigger AS $$
                       BEGIN RAISE EXCEPTION '{APPEND_ONLY}'; END; $$ LANGUAGE plpgsql""")
        op.execute("""CREATE TRIGGER review_events_no_update BEFORE UPDATE ON review_events
                      FOR EACH ROW EXECUTE FUNCTION review_events_append_only()""")
    else:
        op.execute(f"""CREATE TRIGGER review_events_no_update BEFORE UPDATE ON review_events
                       BEGIN SELECT RAISE(ABORT, '{APPEND_ONLY}'); END""")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER review_events_no_update ON review_events")
        op.execute("DROP FUNCTION review_events_append_only()")
    else:
        op.execute("DROP TRIGGER review_events_no_update")
    op.drop_index("ix_alarms_frame", "alarms")
    op.drop_index("ix_frames_camera_time", "frames")
    op.drop_index("ix_frames_status_time", "frames")
    op.drop_table("frame_reviews")
    op.drop_table("review_events")
