"""Review list in commit order: (column, id) indexes for keyset pages by frame id (status, camera, camera +
position: each filter's pages read its own index in id order, never sort), (value, frame_id) indexes on the
child tables the list filters through (detections by class, alarms by severity, frame_reviews by state).

Replaces 0002's (column, processed_at, id) indexes (measured at 1M frames: paging by time could not use the
child-table indexes; benchmarks/results/review_page.md) and 0001's ix_frames_status, which (status, id) covers.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_frames_status_time", "frames")
    op.drop_index("ix_frames_camera_time", "frames")
    op.drop_index("ix_frames_status", "frames")
    op.drop_index("ix_frame_reviews_state_time", "frame_reviews")
    op.create_index("ix_frames_status_id", "frames", ["status", "id"])
    op.create_index("ix_frames_camera_id", "frames", ["camera_id", "id"])
    op.create_index("ix_frames_camera_position_id", "frames", ["camera_id", "position", "id"])
    op.create_index("ix_detections_class_frame", "detections", ["class_name", "frame_id"])
    op.create_index("ix_alarms_severity_frame", "alarms", ["severity", "frame_id"])
    op.create_index("ix_frame_reviews_state", "frame_reviews", ["state", "frame_id"])


def downgrade() -> None:
    op.drop_index("ix_frame_reviews_state", "frame_reviews")
    op.drop_index("ix_alarms_severity_frame", "alarms")
    op.drop_index("ix_detections_class_frame", "detections")
    op.drop_index("ix_frames_camera_position_id", "frames")
    op.drop_index("ix_frames_camera_id", "frames")
    op.drop_index("ix_frames_status_id", "frames")
    op.create_index("ix_frame_reviews_state_time", "frame_reviews", ["state", "processed_at", "frame_id"])
    op.create_index("ix_frames_status", "frames", ["status"])
    op.create_index("ix_frames_camera_time", "frames", ["camera_id", "processed_at", "id"])
    op.create_index("ix_frames_status_time", "frames", ["status", "processed_at", "id"])
