"""A computation asked to leave parts out shows only the stages it runs and caches under the
parameters that say so."""

from __future__ import annotations

from pathlib import Path

from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import progress_pb2 as ppb
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
