"""Translation between messages and the export's plain values: the peers' (``peers``) and the
export requests' (``options``). The only place the clients, the servicer and the job engine
turn one into the other, so the checks, plans and stages never see a request or a peer's message
(the job's typed config, checkpoint and outcome excepted)."""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf import json_format
from google.protobuf.timestamp_pb2 import Timestamp
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio_common import dashboard_codec
from mistudio_common.architectures import saelens_name
from mistudio_common.dashboard_codec import (
    COMPONENT_FROM_PB,
    COMPONENT_TO_PB,
    METRIC_FROM_PB,
    METRIC_TO_PB,
    SCALE_FROM_PB,
    SCALE_TO_PB,
    check_components,
)
from mistudio_common.errors import InvalidArgument
from mistudio_common.grpc_errors import error_from_status

from mistudio_export.estimate import ExportEstimate, PresetEstimate
from mistudio_export.limits import check_request_limits
from mistudio_export.options import DashboardRequest, ExportOptions, NamingRequest
from mistudio_export.packaging import EVERY_FORMAT, Compression, ExportFormat
from mistudio_export.peers import (
    RECORDED_TOKENS_KEY,
    ComputationProgress,
    ComputationRequest,
    ExportJobRecord,
    SaeRecord,
    TokenSource,
)
from mistudio_export.selection import FeatureSelection, StatisticFilter
from mistudio_export.validation import Severity
from mistudio_export.validation_summary import ProblemClass, ValidationProblem, ValidationSummary


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
        formats=stored_formats(m.config),
        outcome=m.outcome if m.HasField("outcome") else None,
        output_uri=m.output_uri,
        output_size_bytes=m.output_size_bytes,
    )


FORMAT_FROM_PB: dict[epb.ExportFormat.ValueType, ExportFormat] = {
    epb.EXPORT_FORMAT_NEURONPEDIA: ExportFormat.NEURONPEDIA,
    epb.EXPORT_FORMAT_SAELENS: ExportFormat.SAELENS,
}
"""The contract's format ids as the plain ones; EXPORT_FORMAT_UNSPECIFIED is not a format."""
FORMAT_TO_PB = {plain: value for value, plain in FORMAT_FROM_PB.items()}


def export_options_from_pb(m: epb.ExportConfig, field: str = "config") -> ExportOptions:
    """A request's config as plain values, once it is within the request limits; a value the
    contract does not define is refused naming its field as the client spells it."""
    check_request_limits(m, field)
    return ExportOptions(
        formats=formats_from_pb(m.formats, f"{field}.formats"),
        selection=selection_from_pb(m.selection),
        dashboard=dashboard_request_from_pb(m.dashboard, f"{field}.dashboard"),
        tokens=token_source_from_pb(m.tokens),
        gzip_json=m.compression.gzip_json,
        zip_compression=Compression.DEFLATED if m.compression.zip_deflate else Compression.STORED,
        delta_base_job_id=m.delta_base_job_id,
        merge_with_base=m.merge_with_base,
        auto_fix=m.auto_fix,
        naming=NamingRequest(
            model_id=m.naming.model_id,
            source_set=m.naming.source_set,
            creator_name=m.naming.creator_name,
            release_id=m.naming.release_id,
            release_title=m.naming.release_title,
            hf_repo_id=m.naming.hf_repo_id,
            visibility=m.naming.visibility,
        ),
        device=m.device,
        batch_size=m.batch_size,
        with_preview=m.with_preview,
        preset=m.preset,
    )


def formats_from_pb(
    values: Iterable[epb.ExportFormat.ValueType], field: str = "config.formats"
) -> tuple[ExportFormat, ...]:
    formats = []
    for index, value in enumerate(values):
        if value not in FORMAT_FROM_PB:
            raise InvalidArgument(
                f"format {value} at position {index} is not a known export format",
                field=field,
                fix="use EXPORT_FORMAT_NEURONPEDIA, EXPORT_FORMAT_SAELENS or both",
            )
        formats.append(FORMAT_FROM_PB[value])
    return tuple(formats)


def stored_formats(config: epb.ExportConfig) -> frozenset[ExportFormat]:
    """What a stored job's config writes (it passed ``formats_from_pb`` when the job started)."""
    return frozenset(formats_from_pb(config.formats)) or EVERY_FORMAT


def selection_from_pb(m: epb.FeatureSelection) -> FeatureSelection:
    """The request's selection as the stages take it (the plan checks it against the SAE)."""
    which = m.WhichOneof("base")
    base: range | frozenset[int] | None = None
    if which == "range":
        base = range(m.range.start, m.range.end)
    elif which == "list":
        base = frozenset(m.list.indices)
    return FeatureSelection(
        base=base,
        labeled_only=m.labeled_only,
        label_contains=m.label_contains,
        category=m.category,
        statistics=StatisticFilter(
            min_frequency=m.min_frequency,
            max_frequency=m.max_frequency,
            min_max_activation=m.min_max_activation,
        ),
    )


def dashboard_request_from_pb(
    m: dpb.DashboardParams, field: str = "config.dashboard"
) -> DashboardRequest:
    """Dashboard options as given (0 and unspecified stay unset); the service's own fields
    (token_source_fingerprint, computation_version) are not the client's to set."""
    check_components(m.omitted_components, f"{field}.omitted_components")
    if m.histogram_scale not in dpb.BinScale.values():
        raise InvalidArgument(
            f"histogram_scale {m.histogram_scale} is unknown",
            field=f"{field}.histogram_scale",
            fix="use BIN_SCALE_LOG or BIN_SCALE_LINEAR",
        )
    if m.token_rank_metric not in dpb.TokenRankMetric.values():
        raise InvalidArgument(
            f"token_rank_metric {m.token_rank_metric} is unknown",
            field=f"{field}.token_rank_metric",
            fix="use TOKEN_RANK_METRIC_SUM, _COUNT or _MEAN",
        )
    return DashboardRequest(
        n_top_examples=m.n_top_examples,
        n_quantile_groups=m.n_quantile_groups,
        examples_per_quantile_group=m.examples_per_quantile_group,
        context_left=m.context_left,
        context_right=m.context_right,
        logit_k=m.logit_k,
        histogram_bins=m.histogram_bins,
        logit_histogram_bins=m.logit_histogram_bins,
        n_top_tokens=m.n_top_tokens,
        histogram_scale=SCALE_FROM_PB.get(m.histogram_scale),
        token_rank_metric=METRIC_FROM_PB.get(m.token_rank_metric),
        aggregate_all_tokens=m.aggregate_all_tokens,
        omitted=frozenset(COMPONENT_FROM_PB[v] for v in m.omitted_components),
    )


def dashboard_request_to_pb(d: DashboardRequest) -> dpb.DashboardParams:
    """A preset's options as ListPresets shows them (unset stays 0)."""
    return dpb.DashboardParams(
        n_top_examples=d.n_top_examples,
        n_quantile_groups=d.n_quantile_groups,
        examples_per_quantile_group=d.examples_per_quantile_group,
        context_left=d.context_left,
        context_right=d.context_right,
        logit_k=d.logit_k,
        histogram_bins=d.histogram_bins,
        logit_histogram_bins=d.logit_histogram_bins,
        n_top_tokens=d.n_top_tokens,
        histogram_scale=SCALE_TO_PB[d.histogram_scale]
        if d.histogram_scale is not None
        else dpb.BIN_SCALE_UNSPECIFIED,
        token_rank_metric=METRIC_TO_PB[d.token_rank_metric]
        if d.token_rank_metric is not None
        else dpb.TOKEN_RANK_METRIC_UNSPECIFIED,
        aggregate_all_tokens=d.aggregate_all_tokens,
        omitted_components=sorted(COMPONENT_TO_PB[c] for c in d.omitted),
    )


def estimate_to_pb(e: ExportEstimate) -> epb.ExportEstimate:
    return epb.ExportEstimate(
        estimated_seconds=e.estimated_seconds,
        estimated_size_bytes=e.estimated_size_bytes,
        feature_count=e.feature_count,
        features_to_compute=e.features_to_compute,
        features_cached=e.features_cached,
        estimated_peak_memory_bytes=e.estimated_peak_memory_bytes,
        stages=[ppb.StageEstimate(stage=s.stage, seconds=s.seconds) for s in e.stages],
    )


def preset_to_pb(listed: PresetEstimate) -> epb.Preset:
    preset, estimate = listed.preset, listed.estimate
    m = epb.Preset(
        name=preset.name,
        title=preset.title,
        description=preset.description,
        dashboard=dashboard_request_to_pb(preset.dashboard),
        max_tokens=preset.max_tokens,
    )
    if estimate is not None:
        m.estimate.CopyFrom(estimate_to_pb(estimate))
        m.warnings.extend(estimate.warnings)
    return m


def validation_summary_to_pb(v: ValidationSummary) -> epb.ValidationSummary:
    """The summary as a job's outcome and checkpoint record it."""
    return epb.ValidationSummary(
        valid=v.valid,
        files_checked=v.files_checked,
        error_count=v.error_count,
        warning_count=v.warning_count,
        classes=[
            epb.ProblemClass(code=c.code, count=c.count, suggested_fix=c.suggested_fix)
            for c in v.classes
        ],
        fixes_applied=v.fixes_applied,
    )


def validation_summary_from_pb(m: epb.ValidationSummary) -> ValidationSummary:
    """A checkpoint's summary, for a resumed job that validated its files already."""
    return ValidationSummary(
        valid=m.valid,
        files_checked=m.files_checked,
        error_count=m.error_count,
        warning_count=m.warning_count,
        classes=tuple(ProblemClass(c.code, c.count, c.suggested_fix) for c in m.classes),
        fixes_applied=tuple(m.fixes_applied),
    )


SEVERITY_TO_PB = {Severity.ERROR: epb.SEVERITY_ERROR, Severity.WARNING: epb.SEVERITY_WARNING}
"""Every severity a report lists (``validation_summary.REPORTED``)."""


def validation_problem_to_pb(p: ValidationProblem) -> epb.ValidationProblem:
    return epb.ValidationProblem(
        severity=SEVERITY_TO_PB[p.severity],
        code=p.code,
        file=p.file,
        pointer=p.pointer,
        message=p.message,
    )
