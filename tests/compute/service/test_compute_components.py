"""A computation asked to leave parts out shows only the stages it runs and caches under the
parameters that say so."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio.compute.v1 import compute_service_pb2_grpc as cgrpc

from tests.compute.service.conftest import compute_request


def test_left_out_parts_have_no_stage_and_reach_the_result_params(
    compute: cgrpc.ComputeServiceStub, registered_sae: str, token_file: Path
) -> None:
    omitted = [dpb.DASHBOARD_COMPONENT_LOGIT_LENS, dpb.DASHBOARD_COMPONENT_TOKEN_AGGREGATION]
    params = dpb.DashboardParams(omitted_components=omitted)
    request = compute_request(registered_sae, token_file, params=params)
    last = list(compute.ComputeDashboards(request))[-1]
    assert last.progress.state == ppb.JOB_STATE_SUCCEEDED, last.progress.error
    assert [s.stage for s in last.progress.stages] == [
        ppb.STAGE_VALIDATING,
        ppb.STAGE_ACTIVATION_PASS,
        ppb.STAGE_LOADING_EXAMPLES,
        ppb.STAGE_HISTOGRAMS,
        ppb.STAGE_CACHING,
    ]
    assert list(last.result.params.omitted_components) == omitted


def test_unknown_component_is_refused_before_any_job(
    compute: cgrpc.ComputeServiceStub, registered_sae: str, token_file: Path
) -> None:
    params = dpb.DashboardParams(omitted_components=[0])
    request = compute_request(registered_sae, token_file, params=params)
    with pytest.raises(grpc.RpcError) as err:
        list(compute.ComputeDashboards(request))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a dashboard component" in (err.value.details() or "")


def test_estimate_shrinks_with_the_parts_left_out(
    compute: cgrpc.ComputeServiceStub, registered_sae: str, token_file: Path
) -> None:
    def seconds(*omitted: int) -> float:
        request = cpb.EstimateComputationRequest(
            sae=cpb.SaeReference(sae_id=registered_sae),
            tokens=tpb.TokenSource(token_file=str(token_file)),
            params=dpb.DashboardParams(omitted_components=omitted),
        )
        return compute.EstimateComputation(request).estimated_seconds

    full = seconds()
    lens_off = seconds(dpb.DASHBOARD_COMPONENT_LOGIT_LENS)
    assert 0 < lens_off < full
    assert (
        seconds(dpb.DASHBOARD_COMPONENT_LOGIT_LENS, dpb.DASHBOARD_COMPONENT_TOKEN_AGGREGATION)
        < lens_off
    )
