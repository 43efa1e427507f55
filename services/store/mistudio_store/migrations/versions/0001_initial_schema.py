"""Initial schema: SAEs, features, explanations, cached dashboards, export jobs.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# Frozen copies of the model types: a migration must not change when the models do.
JSON_DOC = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True), "postgresql"
)
AUTO_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TIMESTAMP = sa.DateTime(timezone=True)


def _sae_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["sae_pk"], ["saes.id"], name=op.f(f"fk_{table}_sae_pk_saes"), ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "saes",
        sa.Column("id", AUTO_ID, autoincrement=True, nullable=False),
        sa.Column("sae_id", sa.String(128), nullable=False),
        sa.Column("model_id", sa.String(512), nullable=False),
        sa.Column("hook_point", sa.String(256), nullable=False),
        sa.Column("d_in", sa.Integer(), nullable=False),
        sa.Column("d_sae", sa.Integer(), nullable=False),
        sa.Column("architecture", sa.String(32), nullable=False),
        sa.Column("weights_uri", sa.Text(), nullable=False),
        sa.Column("training_dataset", sa.Text(), nullable=False),
        sa.Column("n_training_tokens", sa.BigInteger(), nullable=False),
        sa.Column("l0", sa.Float(), nullable=False),
        sa.Column("explained_variance", sa.Float(), nullable=False),
        sa.Column("neuronpedia_model_id", sa.String(256), nullable=False),
        sa.Column("neuronpedia_source_set", sa.String(256), nullable=False),
        sa.Column("config", JSON_DOC, nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_saes")),
        sa.UniqueConstraint("sae_id", name=op.f("uq_saes_sae_id")),
    )
    op.create_table(
        "features",
        sa.Column("sae_pk", AUTO_ID, nullable=False),
        sa.Column("feature_index", sa.BigInteger(), nullable=False),
        sa.Column("label", sa.Text(), nullable=False),
        sa.Column("category", sa.String(128), nullable=False),
        sa.Column("activation_frequency", sa.Float(), nullable=False),
        sa.Column("max_activation", sa.Float(), nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        _sae_fk("features"),
        sa.PrimaryKeyConstraint("sae_pk", "feature_index", name=op.f("pk_features")),
    )
    op.create_index(
        op.f("ix_features_sae_pk_category_feature_index"),
        "features",
        ["sae_pk", "category", "feature_index"],
    )
    op.create_table(
        "explanations",
        sa.Column("id", AUTO_ID, autoincrement=True, nullable=False),
        sa.Column("sae_pk", AUTO_ID, nullable=False),
        sa.Column("feature_index", sa.BigInteger(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("method", sa.String(128), nullable=False),
        sa.Column("explainer_model", sa.String(128), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        _sae_fk("explanations"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_explanations")),
    )
    op.create_index(
        op.f("ix_explanations_sae_pk_feature_index_created_at_id"),
        "explanations",
        ["sae_pk", "feature_index", "created_at", "id"],
    )
    op.create_table(
        "dashboards",
        sa.Column("sae_pk", AUTO_ID, nullable=False),
        sa.Column("params_key", sa.String(64), nullable=False),
        sa.Column("feature_index", sa.BigInteger(), nullable=False),
        sa.Column("params", JSON_DOC, nullable=False),
        sa.Column("computation_version", sa.String(64), nullable=False),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("data", JSON_DOC, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        _sae_fk("dashboards"),
        sa.PrimaryKeyConstraint(
            "sae_pk", "params_key", "feature_index", name=op.f("pk_dashboards")
        ),
    )
    op.create_table(
        "export_jobs",
        sa.Column("job_id", sa.String(64), nullable=False),
        sa.Column("sae_pk", AUTO_ID, nullable=False),
        sa.Column("owner", sa.String(128), nullable=False),
        sa.Column("request_id", sa.String(128), nullable=True),
        sa.Column("config", JSON_DOC, nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("progress", JSON_DOC, nullable=True),
        sa.Column("output_uri", sa.Text(), nullable=False),
        sa.Column("output_size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("feature_count", sa.Integer(), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=False),
        sa.Column("error_details", JSON_DOC, nullable=True),
        sa.Column("checkpoint", JSON_DOC, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        _sae_fk("export_jobs"),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_export_jobs")),
        sa.UniqueConstraint("sae_pk", "request_id", name=op.f("uq_export_jobs_sae_pk_request_id")),
    )
    for columns in (
        ["created_at", "job_id"],
        ["sae_pk", "created_at", "job_id"],
        ["owner", "created_at", "job_id"],
    ):
        op.create_index(op.f(f"ix_export_jobs_{'_'.join(columns)}"), "export_jobs", columns)


def downgrade() -> None:
    # Children first; their indexes go with them.
    for table in ("export_jobs", "dashboards", "explanations", "features", "saes"):
        op.drop_table(table)
