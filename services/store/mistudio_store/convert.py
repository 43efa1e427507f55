"""Rows <-> plain records (``records``) and export job messages: enum names, JSON documents
and UTC timestamps.

Enums are stored by their short lowercase name ("jumprelu", "running") so the tables read
well in psql; JSON columns hold ProtoJSON, which round-trips exactly.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

from google.protobuf import json_format, struct_pb2, timestamp_pb2
from google.protobuf.message import Message
from google.rpc import status_pb2
from mistudio.common.v1 import progress_pb2
from mistudio.export.v1.export_job_pb2 import ExportCheckpoint, ExportOutcome
from mistudio.export.v1.export_service_pb2 import ExportConfig
from mistudio.store.v1 import store_service_pb2 as pb

from mistudio_store.db.models import ExplanationRow, ExportJobRow, FeatureRow, SaeRow
from mistudio_store.records import Explanation, Feature, Sae

M = TypeVar("M", bound=Message)


def utc(value: datetime) -> datetime:
    """SQLite hands timestamps back without a zone; everything we store is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def now() -> datetime:
    return datetime.now(UTC)


def timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    message = timestamp_pb2.Timestamp()
    message.FromDatetime(utc(value))
    return message


def from_timestamp(message: Message, field: str) -> datetime | None:
    if not message.HasField(field):
        return None
    return getattr(message, field).ToDatetime(tzinfo=UTC)  # type: ignore[no-any-return]


def enum_name(enum: Any, value: int) -> str:
    """ARCHITECTURE_JUMPRELU -> "jumprelu" (prefix = the enum's zero value less UNSPECIFIED)."""
    prefix = enum.Name(0).removesuffix("UNSPECIFIED")
    return str(enum.Name(value)).removeprefix(prefix).lower()


def enum_value(enum: Any, name: str) -> int:
    prefix = enum.Name(0).removesuffix("UNSPECIFIED")
    return int(enum.Value(prefix + name.upper()))


def struct(data: dict[str, Any] | None) -> struct_pb2.Struct | None:
    if data is None:
        return None
    message = struct_pb2.Struct()
    message.update(data)
    return message


def to_json(message: Message) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def from_json(data: dict[str, Any] | None, message: M, *, lenient: bool = False) -> M | None:
    """``lenient`` skips unknown fields: for documents only the export service writes."""
    if data is None:
        return None
    return json_format.ParseDict(data, message, ignore_unknown_fields=lenient)


def sae_of(row: SaeRow) -> Sae:
    return Sae(
        sae_id=row.sae_id,
        model_id=row.model_id,
        hook_point=row.hook_point,
        d_in=row.d_in,
        d_sae=row.d_sae,
        architecture=row.architecture,
        weights_uri=row.weights_uri,
        training_dataset=row.training_dataset,
        n_training_tokens=row.n_training_tokens,
        l0=row.l0,
        explained_variance=row.explained_variance,
        neuronpedia_model_id=row.neuronpedia_model_id,
        neuronpedia_source_set=row.neuronpedia_source_set,
        config=row.config,
        owner=row.owner,
        created_at=utc(row.created_at),
        updated_at=utc(row.updated_at),
    )


def sae_row(sae: Sae, at: datetime) -> SaeRow:
    return SaeRow(
        sae_id=sae.sae_id,
        model_id=sae.model_id,
        hook_point=sae.hook_point,
        d_in=sae.d_in,
        d_sae=sae.d_sae,
        architecture=sae.architecture,
        weights_uri=sae.weights_uri,
        training_dataset=sae.training_dataset,
        n_training_tokens=sae.n_training_tokens,
        l0=sae.l0,
        explained_variance=sae.explained_variance,
        neuronpedia_model_id=sae.neuronpedia_model_id,
        neuronpedia_source_set=sae.neuronpedia_source_set,
        config=sae.config,
        created_at=at,
        updated_at=at,
        owner=sae.owner,
    )


def feature_of(row: FeatureRow) -> Feature:
    return Feature(
        feature_index=row.feature_index,
        label=row.label,
        category=row.category,
        activation_frequency=row.activation_frequency,
        max_activation=row.max_activation,
        updated_at=utc(row.updated_at),
    )


def feature_values(sae_pk: int, feature: Feature, at: datetime) -> dict[str, Any]:
    return {
        "sae_pk": sae_pk,
        "feature_index": feature.feature_index,
        "label": feature.label,
        "category": feature.category,
        "activation_frequency": feature.activation_frequency,
        "max_activation": feature.max_activation,
        "updated_at": at,
    }


def explanation_of(row: ExplanationRow) -> Explanation:
    return Explanation(
        explanation_id=str(row.id),
        feature_index=row.feature_index,
        description=row.description,
        method=row.method,
        explainer_model=row.explainer_model,
        score=row.score,
        created_at=utc(row.created_at),
    )


def job_to_pb(row: ExportJobRow, sae_id: str, sae_owner: str) -> pb.ExportJob:
    return pb.ExportJob(
        job_id=row.job_id,
        sae_id=sae_id,
        sae_owner=sae_owner,
        owner=row.owner,
        request_id=row.request_id or "",
        config=from_json(row.config, ExportConfig(), lenient=True),
        state=enum_value(progress_pb2.JobState, row.state),  # type: ignore[arg-type]
        progress=from_json(row.progress, progress_pb2.Progress()),
        output_uri=row.output_uri,
        output_size_bytes=row.output_size_bytes,
        feature_count=row.feature_count,
        error_message=row.error_message,
        error_details=from_json(row.error_details, status_pb2.Status(), lenient=True),
        resume=from_json(row.resume, ExportCheckpoint(), lenient=True),
        outcome=from_json(row.outcome, ExportOutcome(), lenient=True),
        created_at=timestamp(row.created_at),
        started_at=timestamp(row.started_at),
        finished_at=timestamp(row.finished_at),
        updated_at=timestamp(row.updated_at),
        holder=row.holder,
        lease_expires_at=timestamp(row.lease_expires_at),
        requested_state=requested_state(row),  # type: ignore[arg-type]
    )


def requested_state(row: ExportJobRow) -> int:
    """The pause or cancel asked of the job's holder; 0 (UNSPECIFIED) for none."""
    return enum_value(progress_pb2.JobState, row.requested_state) if row.requested_state else 0


def job_column_value(job: pb.ExportJob, field: str) -> Any:
    """The column value for one mutable ExportJob field (None where the message leaves it unset)."""
    if field == "state":
        return enum_name(progress_pb2.JobState, job.state)
    if field == "requested_state":
        return enum_name(progress_pb2.JobState, job.requested_state) if job.requested_state else ""
    if field in ("config", "error_details", "resume", "outcome", "progress"):
        if not job.HasField(field):  # type: ignore[arg-type]
            return {} if field == "config" else None
        return to_json(getattr(job, field))
    if field in ("started_at", "finished_at"):
        return from_timestamp(job, field)
    return getattr(job, field)
