"""Export jobs: a pause or cancel asked of the instance that holds a job.

An export instance that does not hold a job cannot stop its run; it records the request in
``requested_state`` and the holder, which reads it whenever it renews its lease, stops the job
and records the state. Existing jobs have no request ("").

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("export_jobs") as table:
        table.add_column(
            sa.Column("requested_state", sa.String(32), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("export_jobs") as table:
        table.drop_column("requested_state")
