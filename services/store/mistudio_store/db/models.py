"""The store's tables as typed SQLAlchemy models.

Every child row hangs off ``saes.id`` with ON DELETE CASCADE, so deleting an SAE removes its
features, explanations, cached dashboards and export jobs in one statement. JSON columns are
JSONB on PostgreSQL and JSON text on SQLite; binary columns are BYTEA and BLOB; timestamps are
always UTC.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

JsonDoc = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
"""JSONB where the database has it; SQL NULL (not JSON null) for None."""

# SQLite only auto-increments an INTEGER PRIMARY KEY, so the 64-bit id narrows there.
AutoId = BigInteger().with_variant(Integer(), "sqlite")

Timestamp = DateTime(timezone=True)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    # Deterministic constraint names, so migrations can address them on every backend.
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _sae_fk() -> Mapped[int]:
    return mapped_column(AutoId, ForeignKey("saes.id", ondelete="CASCADE"), nullable=False)


class SaeRow(Base):
    __tablename__ = "saes"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    sae_id: Mapped[str] = mapped_column(String(128))
    model_id: Mapped[str] = mapped_column(String(512))
    hook_point: Mapped[str] = mapped_column(String(256))
    d_in: Mapped[int] = mapped_column(Integer)
    d_sae: Mapped[int] = mapped_column(Integer)
    architecture: Mapped[str] = mapped_column(String(32))
    weights_uri: Mapped[str] = mapped_column(Text)
    training_dataset: Mapped[str] = mapped_column(Text)
    n_training_tokens: Mapped[int] = mapped_column(BigInteger)
    l0: Mapped[float] = mapped_column(Float)
    explained_variance: Mapped[float] = mapped_column(Float)
    neuronpedia_model_id: Mapped[str] = mapped_column(String(256))
    neuronpedia_source_set: Mapped[str] = mapped_column(String(256))
    config: Mapped[dict[str, Any]] = mapped_column(JsonDoc)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)
    owner: Mapped[str] = mapped_column(String(128), server_default="")
    """The identity that registered the SAE; empty for SAEs stored before owners existed."""

    # An id is unique per owner (two owners may each have "my-sae"); the key also serves
    # ListSaes of one owner, in sae_id order.
    __table_args__ = (UniqueConstraint("owner", "sae_id"),)


class FeatureRow(Base):
    __tablename__ = "features"

    sae_pk: Mapped[int] = mapped_column(
        AutoId, ForeignKey("saes.id", ondelete="CASCADE"), primary_key=True
    )
    feature_index: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    label: Mapped[str] = mapped_column(Text)
    category: Mapped[str] = mapped_column(String(128))
    activation_frequency: Mapped[float] = mapped_column(Float)
    max_activation: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)

    __table_args__ = (Index(None, "sae_pk", "category", "feature_index"),)


class ExplanationRow(Base):
    __tablename__ = "explanations"

    id: Mapped[int] = mapped_column(AutoId, primary_key=True, autoincrement=True)
    sae_pk: Mapped[int] = _sae_fk()
    feature_index: Mapped[int] = mapped_column(BigInteger)
    description: Mapped[str] = mapped_column(Text)
    method: Mapped[str] = mapped_column(String(128))
    explainer_model: Mapped[str] = mapped_column(String(128))
    score: Mapped[float | None] = mapped_column(Float, nullable=True)
    created_at: Mapped[datetime] = mapped_column(Timestamp)

    # Serves ListExplanations' keyset order.
    __table_args__ = (Index(None, "sae_pk", "feature_index", "created_at", "id"),)


class DashboardRow(Base):
    __tablename__ = "dashboards"

    sae_pk: Mapped[int] = mapped_column(
        AutoId, ForeignKey("saes.id", ondelete="CASCADE"), primary_key=True
    )
    params_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    feature_index: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    params: Mapped[dict[str, Any]] = mapped_column(JsonDoc)
    computation_version: Mapped[str] = mapped_column(String(64))
    content_hash: Mapped[str] = mapped_column(String(64))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    """The dashboard's deterministic protobuf wire form (dashboard_codec.dashboard_bytes)."""
    updated_at: Mapped[datetime] = mapped_column(Timestamp)


class ExportJobRow(Base):
    __tablename__ = "export_jobs"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    sae_pk: Mapped[int] = _sae_fk()
    owner: Mapped[str] = mapped_column(String(128))
    # NULL when the client gave no idempotency key (NULLs never collide in the unique key).
    request_id: Mapped[str | None] = mapped_column(String(128))
    config: Mapped[dict[str, Any]] = mapped_column(JsonDoc)
    state: Mapped[str] = mapped_column(String(32))
    stage: Mapped[str] = mapped_column(String(32))
    progress: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    output_uri: Mapped[str] = mapped_column(Text)
    output_size_bytes: Mapped[int] = mapped_column(BigInteger)
    feature_count: Mapped[int] = mapped_column(Integer)
    error_message: Mapped[str] = mapped_column(Text)
    error_details: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    resume: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    outcome: Mapped[dict[str, Any] | None] = mapped_column(JsonDoc)
    created_at: Mapped[datetime] = mapped_column(Timestamp)
    started_at: Mapped[datetime | None] = mapped_column(Timestamp)
    finished_at: Mapped[datetime | None] = mapped_column(Timestamp)
    updated_at: Mapped[datetime] = mapped_column(Timestamp)
    # The export instance running the job, and until when its lease lasts (ClaimExportJob).
    holder: Mapped[str] = mapped_column(String(64), server_default="")
    lease_expires_at: Mapped[datetime | None] = mapped_column(Timestamp)
    # A pause or cancel asked of the holder by another instance (a JobState name; "" for none).
    requested_state: Mapped[str] = mapped_column(String(32), server_default="")

    __table_args__ = (
        UniqueConstraint("sae_pk", "request_id"),
        # ListExportJobs: newest first, overall or per SAE / owner.
        Index(None, "created_at", "job_id"),
        Index(None, "sae_pk", "created_at", "job_id"),
        Index(None, "owner", "created_at", "job_id"),
        # ListExportJobs(finished_before): retention reads only the jobs past its cutoff.
        Index(None, "finished_at"),
    )


class ExportFeatureHashRow(Base):
    """The content hash of one feature in a finished job's archive: later exports compare
    them to copy unchanged features' files. Rows of their own, so the job record stays small."""

    __tablename__ = "export_feature_hashes"

    job_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("export_jobs.job_id", ondelete="CASCADE"), primary_key=True
    )
    feature_index: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64))
