"""Compute's requests as plain values: what the servicer and the job records translate, and
the values the contract cannot mean, refused naming the request's field."""

from __future__ import annotations

import pytest
from google.protobuf.struct_pb2 import Struct
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio_common.dashboard import DashboardParams
from mistudio_common.dashboard_options import DEFAULT_PREPEND_BOS, Component
from mistudio_common.errors import InvalidArgument
from mistudio_common.repeated_requests import differing_fields
from mistudio_compute import messages
from mistudio_compute.hooks import HookKind
from mistudio_compute.tokens import TokenSourceSpec
from mistudio_compute.values import ComputationRequest, SaeFiles, StoredSae

REQUESTS = [
    ComputationRequest(
        StoredSae("sae-1", "alice"),
        TokenSourceSpec(token_file="s3://b/u/t.npy", dataset_name="d", context_size=64),
        DashboardParams(n_top_examples=30, omitted=frozenset({Component.LOGIT_LENS})),
        feature_indices=(3, 1),
        request_id="r",
        batch_size=8,
        device="cpu",
        reuse_cached=True,
        hook_point="blocks.0.hook_resid_pre",
        model_id="gpt2",
    ),
    ComputationRequest(
        SaeFiles("/sae", {"d_sae": 64, "metadata": {"hook_name": "h"}}, "gpt2"),
        TokenSourceSpec(text_paths=("a.txt", "b.txt"), prepend_bos=False, max_tokens=100),
    ),
    ComputationRequest(None),
]


@pytest.mark.parametrize("request_", REQUESTS, ids=["stored", "files", "none"])
def test_a_stored_request_reads_back_as_the_request_that_started_the_job(
    request_: ComputationRequest,
) -> None:
    stored = messages.computation_request_to_pb(request_).SerializeToString(deterministic=True)
    read = cpb.ComputeDashboardsRequest.FromString(stored)
    assert messages.computation_request_from_pb(read) == request_


def test_a_request_that_leaves_the_defaults_unset_is_the_one_that_spells_them_out() -> None:
    sparse = cpb.ComputeDashboardsRequest(
        sae=cpb.SaeReference(sae_id="s"), tokens=tpb.TokenSource(token_file="t.npy")
    )
    spelled = cpb.ComputeDashboardsRequest(
        sae=cpb.SaeReference(sae_id="s"),
        tokens=tpb.TokenSource(token_file="t.npy", prepend_bos=DEFAULT_PREPEND_BOS),
        params=dpb.DashboardParams(n_top_examples=DashboardParams().n_top_examples),
    )
    plain = [messages.computation_request_from_pb(m) for m in (sparse, spelled)]
    assert plain[0] == plain[1]
    assert plain[0].params == DashboardParams() and plain[0].tokens.prepend_bos
    canonical = [messages.computation_request_to_pb(r) for r in plain]
    assert differing_fields(canonical[0], canonical[1], "request") == []


def test_an_sae_config_sent_as_a_struct_keeps_its_whole_numbers_integers() -> None:
    config = Struct()
    config.update({"d_sae": 64, "l1_coefficient": 0.5, "metadata": {"context_size": 128}})
    ref = cpb.SaeReference(files=cpb.SaeFiles(path="/sae", config=config))
    files = messages.sae_ref_from_pb(ref)
    assert files == SaeFiles(
        "/sae", {"d_sae": 64, "l1_coefficient": 0.5, "metadata": {"context_size": 128}}
    )
    assert isinstance(files.config["d_sae"], int)


def test_a_reference_naming_no_sae_is_left_for_the_planning_to_refuse() -> None:
    assert messages.sae_ref_from_pb(cpb.SaeReference(sae_owner="alice")) is None


def test_an_unknown_component_is_refused_naming_the_requests_field() -> None:
    unknown = dpb.DashboardComponent.ValueType(99)  # a value this contract does not define
    request = cpb.EstimateComputationRequest(
        params=dpb.DashboardParams(omitted_components=[unknown])
    )
    with pytest.raises(InvalidArgument) as refused:
        messages.estimate_request_from_pb(request)
    assert refused.value.field == "params.omitted_components"


def test_every_hook_kind_of_the_contract_is_a_plain_one_and_unspecified_is_refused() -> None:
    named = {v for v in cpb.HookKind.values() if v != cpb.HOOK_KIND_UNSPECIFIED}
    assert {messages.hook_kind_from_pb(v) for v in named} == set(HookKind)
    for value in (cpb.HOOK_KIND_UNSPECIFIED, 99):
        with pytest.raises(InvalidArgument) as refused:
            messages.hook_kind_from_pb(value)
        assert refused.value.field == "kind"


def test_validation_checks_tokens_only_when_the_request_gives_them() -> None:
    assert messages.validate_tokens_from_pb(cpb.ValidateSaeRequest()) is None
    given = cpb.ValidateSaeRequest(tokens=tpb.TokenSource(token_file="t.npy"))
    assert messages.validate_tokens_from_pb(given) == TokenSourceSpec(token_file="t.npy")
