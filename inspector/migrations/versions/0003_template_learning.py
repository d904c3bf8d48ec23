"""Template learning and drift: template provenance, per-frame alignment residual, per-template drift state.

- ``templates.provenance``: how a version was made (``{"method": "median", "frames": [...], ...}``, ``"frame"``
  for "use this frame as template", ``"file"``/``"array"`` for ``templates add``).
- ``frames.align_residual``: mean |frame - aligned template| (grey levels) outside the detections.
- ``templates.residual_baseline/residual_recent/residual_frames/drifted/drift_updated_at``: the daemon's
  rolling assessment of the version (``inspector.drift``), what the review page and ``templates list`` show.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("templates") as batch:
        batch.add_column(sa.Column("provenance", sa.JSON))
        batch.add_column(sa.Column("residual_baseline", sa.Float))
        batch.add_column(sa.Column("residual_recent", sa.Float))
        batch.add_column(sa.Column("residual_frames", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("drifted", sa.Boolean, nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("drift_updated_at", sa.DateTime(timezone=True)))
    with op.batch_alter_table("frames") as batch:
        batch.add_column(sa.Column("align_residual", sa.Float))


def downgrade() -> None:
    with op.batch_alter_table("frames") as batch:
        batch.drop_column("align_residual")
    with op.batch_alter_table("templates") as batch:
        for name in ("drift_updated_at", "drifted", "residual_frames", "residual_recent", "residual_baseline",
                     "provenance"):
            batch.drop_column(name)
