"""Export jobs: the config is the typed ExportConfig, and feature hashes get their own table.

``config`` held the ExportConfig as a ``google.protobuf.Struct``, which keeps every number as a
double; it is rewritten as the message's ProtoJSON (integral numbers as integers, no nulls), the
form the store keeps from now on. The per-feature hashes a finished job kept inside its outcome
(``feature_hashes``, one entry per feature) move to ``export_feature_hashes``; the outcome keeps
their count (``feature_hash_count``), so a job record stays small whatever the SAE's width.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

JSON_DOC = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True), "postgresql"
)
INSERT_BATCH = 5000


def upgrade() -> None:
    hashes = op.create_table(
        "export_feature_hashes",
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("feature_index", sa.BigInteger(), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"],
            ["export_jobs.job_id"],
            name=op.f("fk_export_feature_hashes_job_id_export_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "feature_index", name=op.f("pk_export_feature_hashes")),
    )
    jobs = _jobs_table()
    bind = op.get_bind()
    rows = bind.execute(sa.select(jobs.c.job_id, jobs.c.config, jobs.c.outcome)).all()
    for job_id, config, outcome in rows:
        values: dict[str, Any] = {}
        if isinstance(config, dict):
            values["config"] = _proto_json(config)
        if isinstance(outcome, dict) and "feature_hashes" in outcome:
            moved = {int(i): str(h) for i, h in (outcome.pop("feature_hashes") or {}).items()}
            items = [
                {"job_id": job_id, "feature_index": i, "content_hash": h} for i, h in moved.items()
            ]
            for start in range(0, len(items), INSERT_BATCH):
                bind.execute(hashes.insert(), items[start : start + INSERT_BATCH])
            if moved:
                outcome["feature_hash_count"] = str(len(moved))  # int64 in ProtoJSON
            values["outcome"] = outcome
        if values:
            bind.execute(jobs.update().where(jobs.c.job_id == job_id).values(**values))


def _proto_json(value: Any) -> Any:
    """A Struct's JSON as ProtoJSON: integral doubles become integers, nulls are dropped."""
    if isinstance(value, dict):
        return {k: _proto_json(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_proto_json(v) for v in value if v is not None]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _jobs_table() -> sa.TableClause:
    return sa.table(
        "export_jobs",
        sa.column("job_id", sa.String),
        sa.column("config", JSON_DOC),
        sa.column("outcome", JSON_DOC),
    )


def downgrade() -> None:
    """Puts the hashes back into each job's outcome (the config stays valid Struct JSON)."""
    jobs = _jobs_table()
    hashes = sa.table(
        "export_feature_hashes",
        sa.column("job_id", sa.String),
        sa.column("feature_index", sa.BigInteger),
        sa.column("content_hash", sa.String),
    )
    bind = op.get_bind()
    for job_id, outcome in bind.execute(sa.select(jobs.c.job_id, jobs.c.outcome)).all():
        if not isinstance(outcome, dict) or "feature_hash_count" not in outcome:
            continue
        query = sa.select(hashes.c.feature_index, hashes.c.content_hash).where(
            hashes.c.job_id == job_id
        )
        outcome.pop("feature_hash_count")
        outcome["feature_hashes"] = {str(i): h for i, h in bind.execute(query).all()}
        bind.execute(jobs.update().where(jobs.c.job_id == job_id).values(outcome=outcome))
    op.drop_table("export_feature_hashes")
