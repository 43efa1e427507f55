"""Export jobs: the instance that runs a job holds a lease on it.

``holder`` names the export instance and ``lease_expires_at`` says until when its lease lasts;
another instance adopts the job only after that (ClaimExportJob). Existing jobs have no holder,
so any instance may claim them.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("export_jobs") as table:
        table.add_column(sa.Column("holder", sa.String(64), nullable=False, server_default=""))
        table.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("export_jobs") as table:
        table.drop_column("lease_expires_at")
        table.drop_column("holder")
