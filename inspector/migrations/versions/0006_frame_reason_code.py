"""frames.reason_code (the quarantine reason as a code), frames.sha256 nullable (content never read).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("frames") as batch:
        batch.add_column(sa.Column("reason_code", sa.String(32)))
        batch.alter_column("sha256", existing_type=sa.String(64), nullable=True)
    frames = sa.table("frames", sa.column("id", sa.Integer), sa.column("reason", sa.Text),
                      sa.column("reason_code", sa.String(32)), sa.column("status", sa.String(16)))
    bind = op.get_bind()
    rows = bind.execute(sa.select(frames.c.id, frames.c.reason).where(frames.c.status == "quarantined")).all()
    for frame_id, reason in rows:  # rows written before the code had its column: "kind: message"
        code = (reason or "").split(":", 1)[0].strip()
        if code:
            bind.execute(frames.update().where(frames.c.id == frame_id).values(reason_code=code[:32]))


def downgrade() -> None:
    frames = sa.table("frames", sa.column("sha256", sa.String(64)))
    op.get_bind().execute(frames.update().where(frames.c.sha256.is_(None)).values(sha256=""))
    with op.batch_alter_table("frames") as batch:
        batch.alter_column("sha256", existing_type=sa.String(64), nullable=False)
        batch.drop_column("reason_code")
