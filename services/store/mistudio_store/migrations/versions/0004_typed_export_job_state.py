"""Export jobs: the untyped checkpoint becomes typed resume state, beside the finished outcome.

``checkpoint`` is renamed ``resume`` (mistudio.export.v1.ExportCheckpoint as ProtoJSON) and
``outcome`` (mistudio.export.v1.ExportOutcome) holds the result and what later exports read.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

JSON_DOC = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True), "postgresql"
)


def upgrade() -> None:
    with op.batch_alter_table("export_jobs") as table:
        table.alter_column("checkpoint", new_column_name="resume")
        table.add_column(sa.Column("outcome", JSON_DOC, nullable=True))
    jobs = sa.table(
        "export_jobs",
        sa.column("job_id", sa.String),
        sa.column("resume", JSON_DOC),
        sa.column("outcome", JSON_DOC),
    )
    bind = op.get_bind()
    for job_id, old in bind.execute(sa.select(jobs.c.job_id, jobs.c.resume)).all():
        if isinstance(old, dict) and old:
            resume, outcome = _split(old)
            update = jobs.update().where(jobs.c.job_id == job_id)
            bind.execute(update.values(resume=resume or None, outcome=outcome or None))


def _split(old: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The old checkpoint's string keys, as the typed resume state and outcome (ProtoJSON)."""
    resume: dict[str, Any] = {}
    compute = old.get("compute") or {}
    if compute:
        part: dict[str, Any] = {"attempt": compute.get("attempt", 0)}
        if compute.get("paused_job"):
            part["paused_computation_id"] = compute["paused_job"]
        if compute.get("done"):
            keys = ("features_computed", "features_reused", "tokens_processed", "device", "params")
            part["result"] = {k: compute[k] for k in keys if k in compute}
        resume["compute"] = part
    if old.get("collect"):
        resume["collect"] = old["collect"]
    if old.get("formats_done"):
        resume["formats"] = {
            "done": old["formats_done"],
            "features_unchanged": old.get("features_unchanged", 0),
        }
    if old.get("validation"):
        resume["validation"] = old["validation"]
    outcome = {
        name: old[key]
        for name, key in (
            ("result", "result"),
            ("render_key", "render_key"),
            ("feature_hashes", "feature_hashes"),
            ("measured", "measured"),
        )
        if old.get(key)
    }
    return resume, outcome


def downgrade() -> None:
    """Drops the outcome (results of finished jobs) and keeps the resume state as it is."""
    with op.batch_alter_table("export_jobs") as table:
        table.drop_column("outcome")
        table.alter_column("resume", new_column_name="checkpoint")
