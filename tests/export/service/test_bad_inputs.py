"""Bad requests fail at creation with a status that names the option or lists what is missing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import torch
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.store.v1 import store_service_pb2 as spb

from tests.export.service.errors import details
from tests.export.service.stack import (
    Stack,
    export_config,
    recorded_tokens,
    register_sae,
    run_to_end,
    token_source,
    write_sae_folder,
    write_tokens,
)


def start_error(stack: Stack, sae_id: str, config: epb.ExportConfig) -> dict[str, Any]:
    request = epb.StartExportRequest(sae_id=sae_id, config=config)
    with pytest.raises(grpc.RpcError) as caught:
        run_to_end(stack.exports.StartExport(request))
    return details(caught.value)


@pytest.mark.parametrize(
    ("config", "option"),
    [
        (epb.ExportConfig(dashboard=dpb.DashboardParams(logit_k=5)), "config.dashboard.logit_k"),
        (
            epb.ExportConfig(dashboard=dpb.DashboardParams(n_top_examples=101)),
            "config.dashboard.n_top_examples",
        ),
        (
            epb.ExportConfig(dashboard=dpb.DashboardParams(histogram_bins=10)),
            "config.dashboard.histogram_bins",
        ),
        (
            epb.ExportConfig(selection=epb.FeatureSelection(range=epb.IndexRange(start=4, end=99))),
            "config.selection.range",
        ),
        (
            epb.ExportConfig(selection=epb.FeatureSelection(list=epb.FeatureList(indices=[1, 32]))),
            "config.selection.list.indices",
        ),
        (
            epb.ExportConfig(selection=epb.FeatureSelection(min_frequency=0.5, max_frequency=0.1)),
            "config.selection.max_frequency",
        ),
        (epb.ExportConfig(formats=[7]), "config.formats"),  # type: ignore[list-item]
        (epb.ExportConfig(merge_with_base=True), "config.merge_with_base"),
        (epb.ExportConfig(device="tpu"), "config.device"),
        (
            epb.ExportConfig(naming=epb.NeuronpediaNaming(model_id="Bad Model")),
            "config.naming.model_id",
        ),
    ],
)
def test_invalid_option_is_named(
    stack: Stack, sae_id: str, tokens: tpb.TokenSource, config: epb.ExportConfig, option: str
) -> None:
    config.tokens.CopyFrom(tokens)
    found = start_error(stack, sae_id, config)
    assert found["code"] == grpc.StatusCode.INVALID_ARGUMENT
    assert found["fields"] == [option]


def test_sae_without_weights_or_tokens_lists_both(stack: Stack) -> None:
    register_sae(stack, "no-data-sae", "")
    found = start_error(stack, "no-data-sae", epb.ExportConfig())
    assert found["code"] == grpc.StatusCode.FAILED_PRECONDITION
    subjects = [subject for subject, _ in found["precondition"]]
    assert subjects == ["weights_uri", "tokens"]
    assert all(description for _, description in found["precondition"])


def test_missing_weights_file_is_a_failed_precondition(
    stack: Stack, tokens: tpb.TokenSource, tmp_path: Path
) -> None:
    register_sae(stack, "gone-sae", str(tmp_path / "nowhere"))
    found = start_error(stack, "gone-sae", export_config(tokens))
    assert found["code"] == grpc.StatusCode.FAILED_PRECONDITION
    assert len(found["precondition"]) == 1


def test_missing_token_file_names_the_option(stack: Stack, sae_id: str, tmp_path: Path) -> None:
    tokens = tpb.TokenSource(token_file=str(tmp_path / "missing.npy"))
    found = start_error(stack, sae_id, export_config(tokens))
    assert found["code"] == grpc.StatusCode.INVALID_ARGUMENT
    assert found["fields"] == ["config.tokens.token_file"]


def job_count(stack: Stack) -> int:
    return len(stack.records.ListExportJobs(spb.ListExportJobsRequest(page_size=1000)).jobs)


def refused_before_a_job_exists(
    stack: Stack, sae_id: str, config: epb.ExportConfig
) -> dict[str, Any]:
    before = job_count(stack)
    found = start_error(stack, sae_id, config)
    assert job_count(stack) == before
    return found


def test_token_ids_outside_the_vocabulary_are_refused_before_a_job_exists(
    stack: Stack, sae_id: str, tmp_path: Path
) -> None:
    ids = np.full((4, 32), 600, dtype=np.int32)  # stories260K has 512 token ids
    np.save(tmp_path / "big-ids.npy", ids)
    found = refused_before_a_job_exists(
        stack, sae_id, export_config(token_source(tmp_path / "big-ids.npy"))
    )
    assert found["code"] == grpc.StatusCode.INVALID_ARGUMENT
    assert found["fields"] == ["config.tokens.token_file"]
    assert "vocabulary has 512 ids" in found["message"]


def test_rows_longer_than_the_models_context_are_refused_before_a_job_exists(
    stack: Stack, sae_id: str, tmp_path: Path
) -> None:
    path = write_tokens(tmp_path / "long-rows.npy", rows=2, context=600)
    found = refused_before_a_job_exists(
        stack, sae_id, export_config(token_source(path, context=600))
    )
    assert found["code"] == grpc.StatusCode.INVALID_ARGUMENT
    assert found["fields"] == ["config.tokens.context_size"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_device_without_cuda_is_refused_before_a_job_exists(
    stack: Stack, sae_id: str, tokens: tpb.TokenSource
) -> None:
    found = refused_before_a_job_exists(stack, sae_id, export_config(tokens, device="cuda:0"))
    assert found["code"] == grpc.StatusCode.FAILED_PRECONDITION
    assert [subject for subject, _ in found["precondition"]] == ["config.device"]


def test_label_selection_matching_nothing_is_refused_before_a_job_exists(
    stack: Stack, sae_id: str, tokens: tpb.TokenSource
) -> None:
    selection = epb.FeatureSelection(label_contains="no feature is called this")
    found = refused_before_a_job_exists(stack, sae_id, export_config(tokens, selection=selection))
    assert found["code"] == grpc.StatusCode.FAILED_PRECONDITION
    assert [subject for subject, _ in found["precondition"]] == ["config.selection"]


def test_unknown_sae_is_not_found(stack: Stack, tokens: tpb.TokenSource) -> None:
    found = start_error(stack, "no-such-sae", export_config(tokens))
    assert found["code"] == grpc.StatusCode.NOT_FOUND


def test_an_unknown_sae_is_not_found_before_the_config_is_read(stack: Stack) -> None:
    config = epb.ExportConfig(formats=[7], device="tpu")  # type: ignore[list-item]
    found = start_error(stack, "no-such-sae", config)
    assert found["code"] == grpc.StatusCode.NOT_FOUND


def test_unknown_delta_base_is_not_found(
    stack: Stack, sae_id: str, tokens: tpb.TokenSource
) -> None:
    found = start_error(stack, sae_id, export_config(tokens, delta_base_job_id="nope"))
    assert found["code"] == grpc.StatusCode.NOT_FOUND
    assert found["resource"] == "config.delta_base_job_id"


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.GetExport(epb.GetExportRequest(job_id="no-such-job")),
        lambda s: s.CancelExport(epb.CancelExportRequest(job_id="no-such-job")),
        lambda s: s.PauseExport(epb.PauseExportRequest(job_id="no-such-job")),
        lambda s: s.ResumeExport(epb.ResumeExportRequest(job_id="no-such-job")),
        lambda s: s.GetDownloadUrl(epb.GetDownloadUrlRequest(job_id="no-such-job")),
        lambda s: next(s.WatchExport(epb.WatchExportRequest(job_id="no-such-job"))),
        lambda s: next(s.DownloadExport(epb.DownloadExportRequest(job_id="no-such-job"))),
    ],
)
def test_unknown_job_is_not_found(stack: Stack, call: Any) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        call(stack.exports)
    assert details(caught.value)["code"] == grpc.StatusCode.NOT_FOUND


def test_empty_job_id_is_invalid(stack: Stack) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stack.exports.GetExport(epb.GetExportRequest())
    found = details(caught.value)
    assert found["code"] == grpc.StatusCode.INVALID_ARGUMENT
    assert found["fields"] == ["job_id"]


def test_validate_export_checks_without_exporting(
    stack: Stack, sae_id: str, tokens: tpb.TokenSource
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stack.exports.ValidateExport(
            epb.ValidateExportRequest(
                sae_id=sae_id,
                config=export_config(tokens, dashboard=dpb.DashboardParams(histogram_bins=500)),
            )
        )
    assert details(caught.value)["fields"] == ["config.dashboard.histogram_bins"]
    jobs = stack.exports.ListExports(epb.ListExportsRequest(sae_id=sae_id)).jobs
    assert not jobs


def test_recorded_token_source_is_used_when_none_is_given(
    stack: Stack, sae_folder: Path, tokens: tpb.TokenSource
) -> None:
    register_sae(stack, "recorded-sae", str(sae_folder), config=recorded_tokens(tokens))
    response = stack.exports.ValidateExport(
        epb.ValidateExportRequest(sae_id="recorded-sae", config=epb.ExportConfig())
    )
    estimate = response.estimate
    assert estimate.feature_count == 32
    assert estimate.features_to_compute == 32
    assert estimate.features_cached == 0
    assert estimate.estimated_seconds > 0
    assert estimate.estimated_size_bytes > 0
    assert any("default rates" in w for w in response.warnings)


def test_nul_byte_in_owner_is_invalid_argument_without_sql(
    stack: Stack, sae_id: str, tokens: tpb.TokenSource
) -> None:
    request = epb.StartExportRequest(sae_id=sae_id, owner="ali\x00ce", config=export_config(tokens))
    with pytest.raises(grpc.RpcError) as caught:
        run_to_end(stack.exports.StartExport(request))
    found = details(caught.value)
    assert found["code"] == grpc.StatusCode.INVALID_ARGUMENT
    assert found["fields"] == ["owner"]
    assert "INSERT" not in found["message"] and "SELECT" not in found["message"]


def test_npy_header_claiming_40_gb_is_invalid_argument(
    stack: Stack, sae_id: str, tmp_path: Path
) -> None:
    path = tmp_path / "liar.npy"
    with path.open("wb") as handle:
        header = {"descr": "<i4", "fortran_order": False, "shape": (10_000_000, 1024)}
        np.lib.format.write_array_header_1_0(handle, header)
        handle.write(np.ones((4, 32), np.int32).tobytes())
    found = refused_before_a_job_exists(stack, sae_id, export_config(token_source(path)))
    assert found["code"] == grpc.StatusCode.INVALID_ARGUMENT
    assert found["fields"] == ["config.tokens.token_file"]


def test_infinite_d_in_in_cfg_json_is_refused_as_permanent_naming_the_key(
    stack: Stack, tokens: tpb.TokenSource, tmp_path: Path
) -> None:
    folder = write_sae_folder(tmp_path / "inf-sae")
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["d_in"] = float("inf")
    (folder / "cfg.json").write_text(json.dumps(cfg))
    register_sae(stack, "inf-sae", str(folder))
    found = refused_before_a_job_exists(stack, "inf-sae", export_config(tokens))
    assert found["code"] == grpc.StatusCode.FAILED_PRECONDITION  # the SAE's files, not the request
    assert [subject for subject, _ in found["precondition"]] == ["d_in"]


def test_cfg_json_nested_100k_deep_is_refused_as_permanent_before_a_job_exists(
    stack: Stack, tokens: tpb.TokenSource, tmp_path: Path
) -> None:
    folder = write_sae_folder(tmp_path / "deep-sae")
    (folder / "cfg.json").write_text("[" * 100_000 + "]" * 100_000)
    register_sae(stack, "deep-sae", str(folder))
    found = refused_before_a_job_exists(stack, "deep-sae", export_config(tokens))
    assert found["code"] == grpc.StatusCode.FAILED_PRECONDITION  # the SAE's files, not the request
    assert "Traceback" not in found["message"] and "RecursionError" not in found["message"]


def test_reused_request_id_with_another_config_is_already_exists_and_owners_keep_their_own(
    stack: Stack, sae_folder: Path, tokens: tpb.TokenSource
) -> None:
    for owner in ("ann", "bob"):  # an sae_id is unique per owner: each has its own shared-sae
        register_sae(stack, "shared-sae", str(sae_folder), owner=owner)
    config = export_config(tokens, formats=[epb.EXPORT_FORMAT_SAELENS])
    first = epb.StartExportRequest(
        sae_id="shared-sae", request_id="once", owner="ann", config=config
    )
    job_id = run_to_end(stack.exports.StartExport(first))[-1].progress.job_id
    again = run_to_end(stack.exports.StartExport(first))
    assert again[-1].progress.job_id == job_id
    other_config = epb.StartExportRequest()
    other_config.CopyFrom(first)
    other_config.config.batch_size = 7
    with pytest.raises(grpc.RpcError) as caught:
        run_to_end(stack.exports.StartExport(other_config))
    found = details(caught.value)
    assert found["code"] == grpc.StatusCode.ALREADY_EXISTS
    assert "job.config.batch_size" in found["message"]
    bobs = epb.StartExportRequest()
    bobs.CopyFrom(first)
    bobs.owner = "bob"  # the same key from another owner is that owner's own request
    bobs_job = run_to_end(stack.exports.StartExport(bobs))[-1].progress.job_id
    assert bobs_job != job_id
    assert stack.exports.GetExport(epb.GetExportRequest(job_id=bobs_job)).job.owner == "bob"
