"""Translation between the peers' messages and the plain values of ``peers``: the only place
the clients and the request planner turn one into the other, so the stages never see a message
of a peer (the job's typed config and checkpoint excepted)."""

from __future__ import annotations

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio_common import dashboard_codec
from mistudio_common.architectures import saelens_name
from mistudio_common.errors import InvalidArgument
from mistudio_common.grpc_errors import error_from_status

from mistudio_export.peers import (
    ComputationProgress,
    ComputationRequest,
    ExportJobRecord,
    SaeRecord,
    TokenSource,
)

RECORDED_TOKENS_KEY = "token_source"
"""Key of the SAE record's config under which a default token source (TokenSource JSON) lives."""


def token_source_from_pb(m: tpb.TokenSource) -> TokenSource:
    which = m.WhichOneof("source")
    return TokenSource(
        token_file=m.token_file,
        text_paths=tuple(m.text.paths) if which == "text" else None,
        dataset_name=m.dataset_name,
        context_size=m.context_size,
        prepend_bos=m.prepend_bos if m.HasField("prepend_bos") else None,
        max_tokens=m.max_tokens,
    )


def token_source_to_pb(t: TokenSource) -> tpb.TokenSource:
    m = tpb.TokenSource(
        dataset_name=t.dataset_name, context_size=t.context_size, max_tokens=t.max_tokens
    )
    if t.text_paths is not None:
        m.text.paths.extend(t.text_paths)
    elif t.token_file:
        m.token_file = t.token_file
    if t.prepend_bos is not None:
        m.prepend_bos = t.prepend_bos
    return m


def sae_from_pb(m: spb.Sae) -> SaeRecord:
    return SaeRecord(
        sae_id=m.sae_id,
        owner=m.owner,
        model_id=m.model_id,
        hook_point=m.hook_point,
        d_in=m.d_in,
        d_sae=m.d_sae,
        architecture=saelens_name(spb.Architecture.Name(m.architecture)) or "standard",
        weights_uri=m.weights_uri,
        training_dataset=m.training_dataset,
        n_training_tokens=m.n_training_tokens,
        l0=m.l0,
        explained_variance=m.explained_variance,
        neuronpedia_model_id=m.neuronpedia_model_id,
        neuronpedia_source_set=m.neuronpedia_source_set,
        created_at=iso_time(m.created_at if m.HasField("created_at") else None),
        recorded_tokens=_recorded_tokens(m),
    )


def iso_time(stamp: Timestamp | None) -> str:
    """A stored time as the domain's records keep it: ISO-8601 in UTC, empty when unset."""
    return stamp.ToDatetime().strftime("%Y-%m-%dT%H:%M:%SZ") if stamp is not None else ""


def _recorded_tokens(m: spb.Sae) -> TokenSource | None:
    recorded = m.config.fields.get(RECORDED_TOKENS_KEY) if m.HasField("config") else None
    if recorded is None:
        return None
    try:
        tokens = json_format.ParseDict(
            json_format.MessageToDict(recorded), tpb.TokenSource(), ignore_unknown_fields=True
        )
    except json_format.ParseError:
        raise InvalidArgument(
            f"the token source recorded with SAE {m.sae_id!r} is not a TokenSource",
            field=f"sae.config.{RECORDED_TOKENS_KEY}",
            fix="record a token source such as {'token_file': '/data/tokens.npy'}",
        ) from None
    return token_source_from_pb(tokens) if tokens.WhichOneof("source") else None


def sae_reference(sae: SaeRecord) -> cpb.SaeReference:
    """How compute names a registered SAE: its id and owner (ids are unique per owner)."""
    return cpb.SaeReference(sae_id=sae.sae_id, sae_owner=sae.owner)


def computation_request_to_pb(r: ComputationRequest) -> cpb.ComputeDashboardsRequest:
    m = cpb.ComputeDashboardsRequest(
        request_id=r.request_id,
        sae=sae_reference(r.sae),
        feature_indices=r.feature_indices,
        params=dashboard_codec.params_to_pb(r.params),
        batch_size=r.batch_size,
        device=r.device,
        reuse_cached=r.reuse_cached,
    )
    if r.tokens is not None:
        m.tokens.CopyFrom(token_source_to_pb(r.tokens))
    return m


def computation_progress_from_pb(m: cpb.ComputeProgress) -> ComputationProgress:
    p = m.progress
    succeeded = p.state == ppb.JOB_STATE_SUCCEEDED
    return ComputationProgress(
        computation_id=p.job_id,
        state=p.state,
        stage=p.stage,
        items_done=p.items_done,
        items_total=p.items_total,
        unit=p.unit,
        message=p.message,
        error=error_from_status(p.error) if p.HasField("error") else None,
        result=m.result if succeeded else None,
    )


def export_job_from_pb(m: spb.ExportJob) -> ExportJobRecord:
    return ExportJobRecord(
        job_id=m.job_id,
        sae_id=m.sae_id,
        sae_owner=m.sae_owner,
        owner=m.owner,
        state=m.state,
        config=m.config,
        progress=m.progress,
        outcome=m.outcome if m.HasField("outcome") else None,
        output_uri=m.output_uri,
        output_size_bytes=m.output_size_bytes,
    )
