"""SAEs get an owner: the identity that registered them (empty for SAEs stored before).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Earlier SAEs have no recorded owner: only admins and services see them.
    with op.batch_alter_table("saes") as batch:
        batch.add_column(sa.Column("owner", sa.String(128), nullable=False, server_default=""))
        batch.create_index(batch.f("ix_saes_owner_sae_id"), ["owner", "sae_id"])


def downgrade() -> None:
    with op.batch_alter_table("saes") as batch:
        batch.drop_index(batch.f("ix_saes_owner_sae_id"))
        batch.drop_column("owner")
