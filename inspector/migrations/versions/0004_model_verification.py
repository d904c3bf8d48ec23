"""Models: how the deployed model was verified (``verification``), part of its identity.

``signature`` (Ed25519 signature of the artifact checked against ``detector.signing_public_key``), ``sha256``
(model file hash checked against the artifact metadata, or computed from the file itself), ``unverified``
(``detector.options.verify_hash: false``: the recorded hash is the artifact's claim, nobody checked it),
``config`` (no model file: the classical difference detector). Existing rows were loaded with the hash check
(the only mode before this revision that recorded them as genuine) unless their backend is ``difference``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""
import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("verification", sa.String(16), nullable=False, server_default="sha256"))
        batch.drop_constraint("uq_models_sha_backend", type_="unique")
        batch.create_unique_constraint("uq_models_sha_backend_verification", ["sha256", "backend", "verification"])
    op.execute("UPDATE models SET verification = 'config' WHERE backend = 'difference'")


def downgrade() -> None:
    with op.batch_alter_table("models") as batch:
        batch.drop_constraint("uq_models_sha_backend_verification", type_="unique")
        batch.create_unique_constraint("uq_models_sha_backend", ["sha256", "backend"])
        batch.drop_column("verification")
