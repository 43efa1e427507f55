"""Translation between compute's requests and answers and their plain values (``values``): the
one place the servicer and the job records turn one into the other, so the planning, the
estimate and the jobs never see a request message (the job's checkpoint and outcome excepted).

A value the contract cannot mean is refused here, naming its field as the client spells it;
everything else is checked by the domain, in the order a user would fix it.
"""

from __future__ import annotations

from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio_common.dashboard import DashboardParams
from mistudio_common.dashboard_codec import check_components, params_from_pb, params_to_pb
from mistudio_common.dashboard_options import prepend_bos
from mistudio_common.errors import InvalidArgument

from mistudio_compute.hooks import HookKind
from mistudio_compute.sae_source import struct_config
from mistudio_compute.tokens import TokenSourceSpec
from mistudio_compute.values import (
    ComputationEstimate,
    ComputationRequest,
    EstimateRequest,
    HookPoint,
    SaeCheck,
    SaeFiles,
    SaeRef,
    StoredSae,
)

HOOK_KIND_FROM_PB: dict[int, HookKind] = {
    cpb.HookKind.Value(f"HOOK_KIND_{kind.name}"): kind for kind in HookKind
}
"""The contract's hook kinds as the plain ones; HOOK_KIND_UNSPECIFIED is not a kind."""


def sae_ref_from_pb(m: cpb.SaeReference) -> SaeRef:
    which = m.WhichOneof("reference")
    if which == "sae_id":
        return StoredSae(m.sae_id, m.sae_owner)
    if which == "files":
        config = struct_config(m.files.config) if m.files.HasField("config") else {}
        return SaeFiles(m.files.path, config, m.files.model_id)
    return None


def sae_ref_to_pb(ref: SaeRef) -> cpb.SaeReference:
    m = cpb.SaeReference()
    if isinstance(ref, StoredSae):
        m.sae_id, m.sae_owner = ref.sae_id, ref.owner
    elif isinstance(ref, SaeFiles):
        m.files.SetInParent()
        m.files.path, m.files.model_id = ref.path, ref.model_id
        if ref.config:
            m.files.config.update(ref.config)
    return m


def token_source_from_pb(m: tpb.TokenSource) -> TokenSourceSpec:
    """The request's token source, its BOS setting resolved (unset: the one default)."""
    return TokenSourceSpec(
        token_file=m.token_file,
        text_paths=tuple(m.text.paths),
        dataset_name=m.dataset_name,
        context_size=m.context_size,
        prepend_bos=prepend_bos(m),
        max_tokens=m.max_tokens,
    )


def token_source_to_pb(spec: TokenSourceSpec) -> tpb.TokenSource:
    m = tpb.TokenSource(
        dataset_name=spec.dataset_name,
        context_size=spec.context_size,
        prepend_bos=spec.prepend_bos,
        max_tokens=spec.max_tokens,
    )
    if spec.token_file:
        m.token_file = spec.token_file
    elif spec.text_paths:
        m.text.paths.extend(spec.text_paths)
    return m


def params_of(m: dpb.DashboardParams) -> DashboardParams:
    """The request's parameters, defaults filled in; an unknown component is refused here
    because the plain parameters cannot carry it (the bounds are the planning's to check)."""
    check_components(m.omitted_components, "params.omitted_components")
    return params_from_pb(m)


def computation_request_from_pb(m: cpb.ComputeDashboardsRequest) -> ComputationRequest:
    return ComputationRequest(
        sae=sae_ref_from_pb(m.sae),
        tokens=token_source_from_pb(m.tokens),
        params=params_of(m.params),
        feature_indices=tuple(m.feature_indices),
        request_id=m.request_id,
        batch_size=m.batch_size,
        device=m.device,
        reuse_cached=m.reuse_cached,
        hook_point=m.hook_point,
        model_id=m.model_id,
    )


def computation_request_to_pb(r: ComputationRequest) -> cpb.ComputeDashboardsRequest:
    """The request as a job record stores it (and compares a repeated one with it): its
    defaults filled in, so that a request and the same one spelled out are one request."""
    return cpb.ComputeDashboardsRequest(
        request_id=r.request_id,
        sae=sae_ref_to_pb(r.sae),
        tokens=token_source_to_pb(r.tokens),
        feature_indices=r.feature_indices,
        params=params_to_pb(r.params),
        batch_size=r.batch_size,
        device=r.device,
        reuse_cached=r.reuse_cached,
        hook_point=r.hook_point,
        model_id=r.model_id,
    )


def estimate_request_from_pb(m: cpb.EstimateComputationRequest) -> EstimateRequest:
    return EstimateRequest(
        sae=sae_ref_from_pb(m.sae),
        tokens=token_source_from_pb(m.tokens),
        params=params_of(m.params),
        feature_count=m.feature_count,
        batch_size=m.batch_size,
    )


def estimate_to_pb(e: ComputationEstimate) -> cpb.EstimateComputationResponse:
    return cpb.EstimateComputationResponse(
        estimated_seconds=e.seconds,
        estimated_tokens=e.tokens,
        rate_source="measured" if e.measured else "default",
        params=params_to_pb(e.params),
        n_rows=e.n_rows,
        context_size=e.context_size,
        prepend_bos=e.prepend_bos,
        n_layers=e.n_layers,
        estimated_peak_memory_bytes=e.peak_memory_bytes,
        stages=[ppb.StageEstimate(stage=s.stage, seconds=s.seconds) for s in e.stages],
    )


def validate_tokens_from_pb(m: cpb.ValidateSaeRequest) -> TokenSourceSpec | None:
    """ValidateSae checks tokens only when the request gives them."""
    return token_source_from_pb(m.tokens) if m.HasField("tokens") else None


def sae_check_to_pb(check: SaeCheck) -> cpb.ValidateSaeResponse:
    return cpb.ValidateSaeResponse(
        architecture=check.architecture,
        d_in=check.d_in,
        d_sae=check.d_sae,
        hook_point=check.hook_point,
        model_id=check.model_id,
        hook_width=check.hook_width,
        d_vocab=check.d_vocab,
        warnings=check.warnings,
    )


def hook_kind_from_pb(value: int) -> HookKind:
    if value not in HOOK_KIND_FROM_PB:
        raise InvalidArgument(
            "no hook kind given"
            if value == cpb.HOOK_KIND_UNSPECIFIED
            else f"kind {value} is not a known hook kind",
            field="kind",
            fix="set kind, e.g. HOOK_KIND_RESID_POST",
        )
    return HOOK_KIND_FROM_PB[value]


def hook_point_to_pb(hook: HookPoint) -> cpb.ResolveHookPointResponse:
    return cpb.ResolveHookPointResponse(
        hook_point=hook.name, width=hook.width, n_layers=hook.n_layers
    )
