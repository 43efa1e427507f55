"""The compute service's unary RPCs and their errors, against real servers on loopback."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio.compute.v1 import compute_service_pb2_grpc as cgrpc
from mistudio_compute.sae import load_sae
from mistudio_compute.tokens import TokenDataset, write_token_file
from safetensors.numpy import save_file

from tests.compute.builders import sae_weights, write_sae_folder
from tests.compute.service.conftest import (
    D_SAE,
    HOOK,
    TINY_MODEL,
    ComputeHarness,
    compute_request,
)

SERVICE = "mistudio.compute.v1.ComputeService"


def bad_request_field(error: grpc.RpcError) -> str:
    """The field named by the BadRequest detail of a failed call."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            return bad.field_violations[0].field
    raise AssertionError(f"no BadRequest detail in {status}")


def test_health_and_reflection_list_the_compute_service(
    harness: ComputeHarness, compute: cgrpc.ComputeServiceStub
) -> None:
    assert harness.channel is not None
    health = health_pb2_grpc.HealthStub(harness.channel)
    reply = health.Check(health_pb2.HealthCheckRequest(service=SERVICE))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    reflection = reflection_pb2_grpc.ServerReflectionStub(harness.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    response = next(iter(reflection.ServerReflectionInfo(iter([request]))))
    assert SERVICE in {s.name for s in response.list_services_response.service}


def test_validate_sae_reports_architecture_and_hook_width(
    compute: cgrpc.ComputeServiceStub, registered_sae: str
) -> None:
    reply = compute.ValidateSae(cpb.ValidateSaeRequest(sae=cpb.SaeReference(sae_id=registered_sae)))
    assert (reply.architecture, reply.d_in, reply.d_sae) == ("standard", 32, D_SAE)
    assert (reply.hook_point, reply.hook_width, reply.model_id) == (HOOK, 32, TINY_MODEL)
    assert reply.d_vocab == 64


def test_resolve_hook_point_names_the_transformer_lens_hook(
    compute: cgrpc.ComputeServiceStub,
) -> None:
    reply = compute.ResolveHookPoint(
        cpb.ResolveHookPointRequest(model_id=TINY_MODEL, layer=1, kind=cpb.HOOK_KIND_ATTN_Z)
    )
    assert (reply.hook_point, reply.width, reply.n_layers) == ("blocks.1.attn.hook_z", 32, 2)


def test_hook_layer_out_of_range_is_invalid_argument(compute: cgrpc.ComputeServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        compute.ResolveHookPoint(
            cpb.ResolveHookPointRequest(model_id=TINY_MODEL, layer=7, kind=cpb.HOOK_KIND_MLP_OUT)
        )
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert bad_request_field(failed.value) == "hook_point"


def test_unknown_sae_id_is_not_found(compute: cgrpc.ComputeServiceStub, token_file: Path) -> None:
    with pytest.raises(grpc.RpcError) as failed:
        list(compute.ComputeDashboards(compute_request("no-such-sae", token_file)))
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]


@pytest.mark.parametrize("rpc", ["WatchComputation", "GetComputation", "CancelComputation"])
def test_unknown_job_id_is_not_found(compute: cgrpc.ComputeServiceStub, rpc: str) -> None:
    request_type = getattr(cpb, f"{rpc}Request")
    with pytest.raises(grpc.RpcError) as failed:
        reply = getattr(compute, rpc)(request_type(job_id="cmp-nope"))
        list(reply) if rpc == "WatchComputation" else None
    assert failed.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]


def files_request(
    folder: Path, token_file: Path, hook_point: str = ""
) -> cpb.ComputeDashboardsRequest:
    request = compute_request("", token_file, hook_point=hook_point)
    request.sae.files.path = str(folder)
    request.sae.files.model_id = TINY_MODEL
    return request


def test_nan_weights_are_invalid_argument_naming_the_tensor(
    compute: cgrpc.ComputeServiceStub, tmp_path: Path, token_file: Path
) -> None:
    weights = sae_weights("standard", 32, D_SAE)
    weights["W_enc"][3, 5] = np.nan
    folder = write_sae_folder(tmp_path / "nan", "standard", 32, D_SAE, weights=weights)
    with pytest.raises(grpc.RpcError) as failed:
        list(compute.ComputeDashboards(files_request(folder, token_file)))
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert bad_request_field(failed.value) == "W_enc"


def test_d_in_mismatch_is_invalid_argument(
    compute: cgrpc.ComputeServiceStub, tmp_path: Path, token_file: Path
) -> None:
    folder = write_sae_folder(tmp_path / "wide", "standard", 48, D_SAE, hook_name=HOOK)
    with pytest.raises(grpc.RpcError) as failed:
        list(compute.ComputeDashboards(files_request(folder, token_file)))
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert bad_request_field(failed.value) == "d_in"


def test_unknown_hook_is_invalid_argument(
    compute: cgrpc.ComputeServiceStub, sae_folder: Path, token_file: Path
) -> None:
    request = files_request(sae_folder, token_file, hook_point="blocks.0.hook_nonsense")
    with pytest.raises(grpc.RpcError) as failed:
        list(compute.ComputeDashboards(request))
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert bad_request_field(failed.value) == "hook_point"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        (dpb.DashboardParams(n_top_examples=500), "params.n_top_examples"),
        (dpb.DashboardParams(logit_k=3), "params.logit_k"),
    ],
)
def test_params_out_of_range_are_invalid_argument(
    compute: cgrpc.ComputeServiceStub,
    registered_sae: str,
    token_file: Path,
    params: dpb.DashboardParams,
    field: str,
) -> None:
    request = compute_request(registered_sae, token_file, params=params)
    with pytest.raises(grpc.RpcError) as failed:
        list(compute.ComputeDashboards(request))
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert bad_request_field(failed.value) == field


def test_export_saelens_files_load_with_sae_lens(
    compute: cgrpc.ComputeServiceStub, registered_sae: str, tmp_path: Path
) -> None:
    frequencies = [0.01 * (i % 7) for i in range(D_SAE)]
    request = cpb.ExportSaeLensFilesRequest(
        sae=cpb.SaeReference(sae_id=registered_sae),
        neuronpedia_id="tiny-model/0-mistudio-res-64",
        feature_frequencies=frequencies,
    )
    out = tmp_path / "exported"
    out.mkdir()
    finished: list[str] = []
    for message in compute.ExportSaeLensFiles(request):
        with (out / message.file_name).open("ab") as f:
            f.write(message.chunk)
        if message.last_chunk:
            finished.append(message.file_name)
    assert finished == ["cfg.json", "sae_weights.safetensors", "sparsity.safetensors"]
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["metadata"]["neuronpedia_id"] == "tiny-model/0-mistudio-res-64"

    from sae_lens import SAE

    loaded = SAE.load_from_disk(str(out), device="cpu")
    ours = load_sae(tmp_path / "sae")
    x = torch.randn(5, 32)
    assert torch.allclose(loaded.encode(x), ours.encode(x), atol=1e-5)


def test_estimate_without_runs_uses_the_default_rate(
    compute: cgrpc.ComputeServiceStub, registered_sae: str, token_file: Path
) -> None:
    request = cpb.EstimateComputationRequest(
        sae=cpb.SaeReference(sae_id=registered_sae),
        tokens=tpb.TokenSource(token_file=str(token_file)),
    )
    reply = compute.EstimateComputation(request)
    assert reply.estimated_tokens == 48 * 16
    assert reply.rate_source == "default" and reply.estimated_seconds > 0
    assert (reply.n_layers, reply.prepend_bos) == (2, True)  # two blocks; BOS by default
    stages = [s.stage for s in reply.stages]
    assert stages[:2] == [ppb.STAGE_VALIDATING, ppb.STAGE_ACTIVATION_PASS]
    assert stages[-1] == ppb.STAGE_CACHING
    assert sum(s.seconds for s in reply.stages) == pytest.approx(reply.estimated_seconds)


def test_estimated_peak_memory_grows_with_the_features_computed_at_once(
    compute: cgrpc.ComputeServiceStub, registered_sae: str, token_file: Path
) -> None:
    def peak(feature_count: int) -> int:
        request = cpb.EstimateComputationRequest(
            sae=cpb.SaeReference(sae_id=registered_sae),
            tokens=tpb.TokenSource(token_file=str(token_file)),
            feature_count=feature_count,
        )
        return compute.EstimateComputation(request).estimated_peak_memory_bytes

    one, all_of_them = peak(1), peak(0)  # 0: every feature of the SAE
    assert 0 < one < all_of_them


def test_estimate_reports_the_bos_its_token_file_records(
    compute: cgrpc.ComputeServiceStub, registered_sae: str, tmp_path: Path
) -> None:
    dataset = TokenDataset.from_array(np.ones((4, 16), np.int32), "rows", prepend_bos=True)
    path = write_token_file(dataset, tmp_path / "rows.npy")  # its provenance says BOS
    tokens = tpb.TokenSource(token_file=str(path), prepend_bos=False)  # the request says none
    request = cpb.EstimateComputationRequest(
        sae=cpb.SaeReference(sae_id=registered_sae), tokens=tokens
    )
    assert compute.EstimateComputation(request).prepend_bos


def test_bare_safetensors_with_config_is_accepted(
    compute: cgrpc.ComputeServiceStub, tmp_path: Path
) -> None:
    path = tmp_path / "bare.safetensors"
    save_file(sae_weights("standard", 32, D_SAE), str(path))
    request = cpb.ValidateSaeRequest(model_id=TINY_MODEL)
    request.sae.files.path = str(path)
    request.sae.files.config.update(
        {"architecture": "standard", "d_in": 32, "d_sae": D_SAE, "hook_name": HOOK}
    )
    reply = compute.ValidateSae(request)
    assert (reply.hook_point, reply.d_sae) == (HOOK, D_SAE)
