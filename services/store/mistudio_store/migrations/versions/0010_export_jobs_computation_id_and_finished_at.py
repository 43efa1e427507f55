"""Export jobs: the checkpoint names any computation it follows; an index on ``finished_at``.

The export checkpoint's ``compute.paused_computation_id`` became ``computation_id`` (set while
the computation runs too, so that an instance adopting a crashed holder's job can cancel it):
stored checkpoints are renamed in their ProtoJSON. ListExportJobs(finished_before) lets
retention read only the jobs past its cutoff; the index keeps that a range read.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

JSON_DOC = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True), "postgresql"
)


def upgrade() -> None:
    with op.batch_alter_table("export_jobs") as table:
        table.create_index("ix_export_jobs_finished_at", ["finished_at"])
    _rename_compute_key("paused_computation_id", "computation_id")


def downgrade() -> None:
    _rename_compute_key("computation_id", "paused_computation_id")
    with op.batch_alter_table("export_jobs") as table:
        table.drop_index("ix_export_jobs_finished_at")


def _rename_compute_key(old: str, new: str) -> None:
    jobs = sa.table("export_jobs", sa.column("job_id", sa.String), sa.column("resume", JSON_DOC))
    bind = op.get_bind()
    for job_id, resume in bind.execute(sa.select(jobs.c.job_id, jobs.c.resume)).all():
        compute = resume.get("compute") if isinstance(resume, dict) else None
        if isinstance(compute, dict) and old in compute:
            compute[new] = compute.pop(old)
            update = jobs.update().where(jobs.c.job_id == job_id).values(resume=resume)
            bind.execute(update)
