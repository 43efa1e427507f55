"""Explanations keep "no score" apart from a score of 0: the score column may be NULL.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("explanations") as batch:  # SQLite rebuilds the table
        batch.alter_column("score", existing_type=sa.Float(), nullable=True)


def downgrade() -> None:
    op.execute("UPDATE explanations SET score = 0 WHERE score IS NULL")
    with op.batch_alter_table("explanations") as batch:
        batch.alter_column("score", existing_type=sa.Float(), nullable=False)
