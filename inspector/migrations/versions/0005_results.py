"""Per-frame results with their own gap-free sequence per bus session (issue 10 item 5).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("bus_sessions") as batch:
        batch.add_column(sa.Column("last_result_seq", sa.Integer, nullable=False, server_default="0"))
    op.create_table(
        "results",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("session_id", sa.String(36), sa.ForeignKey("bus_sessions.id", ondelete="CASCADE"), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("frame_id", sa.Integer, sa.ForeignKey("frames.id", ondelete="CASCADE"), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("session_id", "seq", name="uq_results_session_seq"),
    )
    op.create_index("ix_results_frame", "results", ["frame_id"])


def downgrade() -> None:
    op.drop_index("ix_results_frame", table_name="results")
    op.drop_table("results")
    with op.batch_alter_table("bus_sessions") as batch:
        batch.drop_column("last_result_seq")
