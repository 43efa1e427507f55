"""A full export of a tiny SAE through compute -> store -> export, and what can be done with it."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import grpc
import numpy as np
import pytest
import torch
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio_export import generate
from mistudio_export.packaging import build_archive, verify_archive
from mistudio_export.validation import validate_export, validator

from tests.export.service.errors import details
from tests.export.service.stack import (
    D_SAE,
    DEAD_FEATURES,
    Stack,
    export_config,
    label_features,
    run_to_end,
    sae_weights,
)

LABELS = {1: ("dogs", "animals"), 2: ("cats", "animals"), 3: ("happy", "emotions")}
EXPORT_STAGES = [
    ppb.STAGE_VALIDATING,
    ppb.STAGE_ACTIVATION_PASS,
    ppb.STAGE_LOADING_EXAMPLES,
    ppb.STAGE_LOGIT_LENS,
    ppb.STAGE_HISTOGRAMS,
    ppb.STAGE_TOKEN_AGGREGATION,
    ppb.STAGE_CACHING,
    ppb.STAGE_GENERATING_FILES,
    ppb.STAGE_VALIDATING_OUTPUT,
    ppb.STAGE_CREATING_ARCHIVE,
]


def start(
    stack: Stack, sae_id: str, config: epb.ExportConfig, request_id: str
) -> list[epb.ExportProgress]:
    request = epb.StartExportRequest(request_id=request_id, sae_id=sae_id, config=config)
    return run_to_end(stack.exports.StartExport(request))


def download(stack: Stack, job_id: str, offset: int = 0) -> bytes:
    stream = stack.exports.DownloadExport(epb.DownloadExportRequest(job_id=job_id, offset=offset))
    return b"".join(m.chunk for m in stream)


@pytest.fixture(scope="module")
def config(tokens: tpb.TokenSource) -> epb.ExportConfig:
    return export_config(tokens, compression=epb.Compression(zip_deflate=True))


@pytest.fixture(scope="module")
def first(stack: Stack, sae_id: str, config: epb.ExportConfig) -> list[epb.ExportProgress]:
    label_features(stack, sae_id, LABELS)
    return start(stack, sae_id, config, "first")


@pytest.fixture(scope="module")
def result(first: list[epb.ExportProgress]) -> epb.ExportResult:
    assert first[-1].progress.state == ppb.JOB_STATE_SUCCEEDED, first[-1].progress.error
    return first[-1].result


@pytest.fixture(scope="module")
def archive(stack: Stack, first: list[epb.ExportProgress], result: epb.ExportResult) -> bytes:
    return download(stack, first[-1].progress.job_id)


def test_progress_reports_every_stage_in_order(first: list[epb.ExportProgress]) -> None:
    sequences = [m.progress.sequence for m in first]
    assert sequences == sorted(set(sequences))
    seen = [m.progress.stage for m in first]
    order = [EXPORT_STAGES.index(s) for s in seen]
    assert order == sorted(order)
    assert {ppb.STAGE_ACTIVATION_PASS, ppb.STAGE_CREATING_ARCHIVE} <= set(seen)
    final = first[-1].progress
    assert [s.stage for s in final.stages] == EXPORT_STAGES
    assert all(s.state == ppb.JOB_STATE_SUCCEEDED for s in final.stages)
    assert final.fraction == 1.0 and final.eta_seconds == 0.0
    generating = next(m.progress for m in first if m.progress.stage == ppb.STAGE_GENERATING_FILES)
    assert generating.unit == generate.FileCount.UNIT and generating.items_total > 0
    by_stage = {s.stage: s for s in final.stages}
    assert by_stage[ppb.STAGE_ACTIVATION_PASS].unit == "tokens"
    assert by_stage[ppb.STAGE_ACTIVATION_PASS].items_total > 0
    assert all(s.elapsed_seconds >= 0 for s in final.stages)
    assert any(m.progress.eta_seconds > 0 for m in first)  # an estimate while running


def test_result_counts_every_feature(result: epb.ExportResult) -> None:
    assert result.feature_count == D_SAE
    assert result.features_computed + result.features_reused == D_SAE
    assert result.validation.valid
    assert result.size_bytes > 0 and len(result.archive_sha256) == 64


def test_archive_holds_every_format_with_a_manifest(
    archive: bytes, result: epb.ExportResult, tmp_path: Path
) -> None:
    assert hashlib.sha256(archive).hexdigest() == result.archive_sha256
    path = tmp_path / "export.zip"
    path.write_bytes(archive)
    assert verify_archive(path).ok
    names = set(zipfile.ZipFile(path).namelist())
    assert names == set(result.files)
    expected = {
        "manifest.json",
        "README.md",
        "prefill.json",
        "metadata.json",
        "explanations/explanations.json",
        "saelens/cfg.json",
        "saelens/sae_weights.safetensors",
        "saelens/sparsity.safetensors",
        "saelens/pretrained_saes.yaml",
        "saedashboard/batch-0.json",
        "upload-payloads/manifest.json",
        *(f"features/{i}.json" for i in range(D_SAE)),
    }
    assert expected <= names
    assert any(n.startswith("neuronpedia-importer/stories260k/2-mistudio-res-32/") for n in names)


def test_archive_passes_validation(archive: bytes, tmp_path: Path) -> None:
    zipfile.ZipFile(io.BytesIO(archive)).extractall(tmp_path)
    for packaging in ("manifest.json", "README.md", "prefill.json"):
        # Checked by verify_archive; the validator would take the root manifest.json for an
        # upload-payloads manifest.
        (tmp_path / packaging).unlink()
    report = validate_export(tmp_path)
    assert report.ok, report.summary()
    assert not [p for p in report.problems if "outside its bin" in p.message]  # sampled tokens


def test_validate_archive_finds_nothing_to_fix(
    stack: Stack, first: list[epb.ExportProgress]
) -> None:
    request = epb.ValidateArchiveRequest(job_id=first[-1].progress.job_id, auto_fix=True)
    response = stack.exports.ValidateArchive(request)
    assert response.summary.valid
    assert not response.summary.fixes_applied


def test_saelens_folder_loads_and_encodes_like_our_sae(archive: bytes, tmp_path: Path) -> None:
    from sae_lens import SAE

    zipfile.ZipFile(io.BytesIO(archive)).extractall(tmp_path)
    sae = SAE.load_from_disk(str(tmp_path / "saelens"), device="cpu")
    w = sae_weights()
    x = np.random.default_rng(3).normal(size=(16, w["W_enc"].shape[0])).astype(np.float32)
    expected = np.maximum((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"], 0.0)
    with torch.no_grad():
        got = sae.encode(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert sae.cfg.metadata.hook_name == "blocks.2.hook_resid_post"
    assert sae.cfg.metadata.model_name == "stories260K"  # never the local llama2c path


def test_dead_features_are_exported_with_empty_examples(archive: bytes) -> None:
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        dead = json.loads(zf.read(f"features/{DEAD_FEATURES[0]}.json"))
    assert dead["statistics"]["dead_feature"] is True
    assert dead["activations"] == []


def test_reexport_is_byte_identical_and_regenerates_nothing(
    stack: Stack, sae_id: str, config: epb.ExportConfig, archive: bytes, result: epb.ExportResult
) -> None:
    again = start(stack, sae_id, config, "second")[-1]
    assert again.progress.state == ppb.JOB_STATE_SUCCEEDED
    assert again.progress.job_id != result.output_uri.split("/")[1]
    assert again.result.archive_sha256 == result.archive_sha256
    assert again.result.features_computed == 0
    assert again.result.features_reused == D_SAE
    assert again.result.features_unchanged == D_SAE
    assert download(stack, again.progress.job_id) == archive


def test_formats_written_and_checked_side_by_side_give_the_same_archive(
    stack: Stack,
    sae_id: str,
    config: epb.ExportConfig,
    archive: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(generate, "PARALLEL_MIN_FEATURES", 0)
    monkeypatch.setattr(validator, "PARALLEL_MIN_BYTES", 0)
    again = start(stack, sae_id, config, "side-by-side")[-1]
    assert again.progress.state == ppb.JOB_STATE_SUCCEEDED, again.progress.error
    assert download(stack, again.progress.job_id) == archive


def test_repeated_request_id_reattaches_to_the_same_job(
    stack: Stack, sae_id: str, config: epb.ExportConfig, first: list[epb.ExportProgress]
) -> None:
    messages = start(stack, sae_id, config, "first")
    assert len(messages) == 1
    assert messages[0].progress.job_id == first[-1].progress.job_id
    assert messages[0].result.archive_sha256 == first[-1].result.archive_sha256


def test_watch_after_the_end_gives_the_final_snapshot(
    stack: Stack, first: list[epb.ExportProgress]
) -> None:
    job_id = first[-1].progress.job_id
    messages = list(stack.exports.WatchExport(epb.WatchExportRequest(job_id=job_id)))
    assert len(messages) == 1
    assert messages[0].progress.state == ppb.JOB_STATE_SUCCEEDED
    assert messages[0].progress.sequence >= first[-1].progress.sequence
    assert messages[0].result.archive_sha256 == first[-1].result.archive_sha256


def test_download_resumes_from_an_offset(
    stack: Stack, first: list[epb.ExportProgress], archive: bytes
) -> None:
    job_id = first[-1].progress.job_id
    offset = len(archive) // 3
    request = epb.DownloadExportRequest(job_id=job_id, offset=offset)
    stream = list(stack.exports.DownloadExport(request))
    assert stream[0].offset == offset
    assert all(m.total_size == len(archive) for m in stream)
    assert b"".join(m.chunk for m in stream) == archive[offset:]
    with pytest.raises(grpc.RpcError) as caught:
        download(stack, job_id, offset=len(archive) + 1)
    assert details(caught.value)["fields"] == ["offset"]


def test_download_url_links_to_the_archive(
    stack: Stack, first: list[epb.ExportProgress], archive: bytes
) -> None:
    job_id = first[-1].progress.job_id
    response = stack.exports.GetDownloadUrl(epb.GetDownloadUrlRequest(job_id=job_id))
    link = urlparse(response.url)
    assert Path(url2pathname(link.path)).read_bytes() == archive
    lifetime = response.expires_at.ToDatetime(UTC) - datetime.now(UTC)
    assert 3500 < lifetime.total_seconds() <= 3600
    with pytest.raises(grpc.RpcError) as caught:
        stack.exports.GetDownloadUrl(epb.GetDownloadUrlRequest(job_id=job_id, expiry_seconds=5))
    assert details(caught.value)["fields"] == ["expiry_seconds"]


def test_get_and_list_show_finished_jobs_newest_first(
    stack: Stack, sae_id: str, first: list[epb.ExportProgress]
) -> None:
    job = stack.exports.GetExport(epb.GetExportRequest(job_id=first[-1].progress.job_id)).job
    assert job.sae_id == sae_id and job.owner == "local"
    assert job.result.archive_sha256 == first[-1].result.archive_sha256
    assert job.HasField("created_at") and job.HasField("finished_at")
    page = stack.exports.ListExports(epb.ListExportsRequest(sae_id=sae_id, page_size=1))
    assert len(page.jobs) == 1 and page.next_page_token
    rest = stack.exports.ListExports(
        epb.ListExportsRequest(sae_id=sae_id, page_size=10, page_token=page.next_page_token)
    )
    ids = [page.jobs[0].job_id, *(j.job_id for j in rest.jobs)]
    assert first[-1].progress.job_id == ids[-1]


def test_cancelling_a_finished_export_is_refused(
    stack: Stack, first: list[epb.ExportProgress]
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        stack.exports.CancelExport(epb.CancelExportRequest(job_id=first[-1].progress.job_id))
    assert details(caught.value)["code"] == grpc.StatusCode.FAILED_PRECONDITION


def test_feature_dashboard_comes_from_the_cache_or_is_computed(
    stack: Stack, sae_id: str, tokens: tpb.TokenSource, first: list[epb.ExportProgress]
) -> None:
    cached = stack.exports.GetFeatureDashboard(
        epb.GetFeatureDashboardRequest(sae_id=sae_id, feature_index=3, tokens=tokens)
    )
    assert cached.from_cache and cached.dashboard.feature_index == 3
    other = dpb.DashboardParams(n_top_examples=25)
    request = epb.GetFeatureDashboardRequest(
        sae_id=sae_id, feature_index=3, tokens=tokens, params=other
    )
    with pytest.raises(grpc.RpcError) as caught:
        stack.exports.GetFeatureDashboard(request)
    assert details(caught.value)["code"] == grpc.StatusCode.NOT_FOUND
    request.compute_if_missing = True
    computed = stack.exports.GetFeatureDashboard(request)
    assert not computed.from_cache and computed.dashboard.feature_index == 3
    assert stack.exports.GetFeatureDashboard(request).from_cache


def test_validate_export_estimates_from_the_cache_and_measured_rates(
    stack: Stack, sae_id: str, config: epb.ExportConfig, result: epb.ExportResult
) -> None:
    response = stack.exports.ValidateExport(epb.ValidateExportRequest(sae_id=sae_id, config=config))
    estimate = response.estimate
    assert estimate.feature_count == D_SAE
    assert (estimate.features_cached, estimate.features_to_compute) == (D_SAE, 0)
    assert not any("default rates" in w for w in response.warnings)
    assert 0.5 < estimate.estimated_size_bytes / result.size_bytes < 2.0
    assert estimate.estimated_seconds > 0


def test_gzip_json_and_stored_zip(stack: Stack, sae_id: str, tokens: tpb.TokenSource) -> None:
    config = export_config(
        tokens,
        formats=[epb.EXPORT_FORMAT_NEURONPEDIA],
        compression=epb.Compression(gzip_json=True, zip_deflate=False),
    )
    last = start(stack, sae_id, config, "gzip")[-1]
    assert last.progress.state == ppb.JOB_STATE_SUCCEEDED, last.progress.error
    with zipfile.ZipFile(io.BytesIO(download(stack, last.progress.job_id))) as zf:
        names = set(zf.namelist())
        assert {f"features/{i}.json.gz" for i in range(D_SAE)} <= names
        assert not any(n.startswith("saelens/") for n in names)
        assert all(info.compress_type == zipfile.ZIP_STORED for info in zf.infolist())
        assert json.loads(zf.read("metadata.json"))["feature_file_suffix"] == ".json.gz"


def test_saelens_only_export_needs_no_dashboards(stack: Stack, sae_id: str) -> None:
    config = export_config(formats=[epb.EXPORT_FORMAT_SAELENS])
    messages = start(stack, sae_id, config, "saelens-only")
    last = messages[-1]
    assert last.progress.state == ppb.JOB_STATE_SUCCEEDED, last.progress.error
    assert [s.stage for s in last.progress.stages] == [
        ppb.STAGE_VALIDATING,
        ppb.STAGE_GENERATING_FILES,
        ppb.STAGE_VALIDATING_OUTPUT,
        ppb.STAGE_CREATING_ARCHIVE,
    ]
    assert last.result.feature_count == D_SAE
    top_level = {name.split("/")[0] for name in last.result.files}
    assert top_level == {"manifest.json", "README.md", "prefill.json", "saelens"}


def test_validate_archive_reports_and_repairs_a_damaged_archive(
    stack: Stack, sae_id: str, tokens: tpb.TokenSource, tmp_path: Path
) -> None:
    config = export_config(tokens, formats=[epb.EXPORT_FORMAT_NEURONPEDIA])
    done = start(stack, sae_id, config, "to-damage")[-1]
    job_id = done.progress.job_id
    folder = tmp_path / "unpacked"
    zipfile.ZipFile(io.BytesIO(download(stack, job_id))).extractall(folder)
    feature = json.loads((folder / "features/3.json").read_text())
    feature["activations"][0]["max_value"] += 1.0
    (folder / "features/3.json").write_text(json.dumps(feature))
    (folder / "manifest.json").unlink()
    build_archive(folder, stack.data_dir / "archives" / done.result.output_uri)

    request = epb.ValidateArchiveRequest(job_id=job_id)
    found = stack.exports.ValidateArchive(request)
    assert not found.summary.valid
    errors = [p for p in found.problems if p.severity == epb.SEVERITY_ERROR]
    assert [(p.code, p.file, p.pointer) for p in errors] == [
        ("MAX_VALUE_MISMATCH", "features/3.json", "/activations/0/max_value")
    ]
    request.auto_fix = True
    fixed = stack.exports.ValidateArchive(request)
    assert fixed.summary.valid and len(fixed.summary.fixes_applied) == 1
    repaired = download(stack, job_id)
    job = stack.exports.GetExport(epb.GetExportRequest(job_id=job_id)).job
    assert job.result.archive_sha256 == hashlib.sha256(repaired).hexdigest()
    assert stack.exports.ValidateArchive(epb.ValidateArchiveRequest(job_id=job_id)).summary.valid


def test_export_from_a_text_token_source(stack: Stack, sae_id: str, workdir: Path) -> None:
    text = workdir / "stories.txt"  # under the compute service's input root
    lines = [
        f"Once upon a time a little dog named Max found {n} red balls in the park."
        for n in range(40)
    ]
    text.write_text("\n".join(lines) + "\n")
    tokens = tpb.TokenSource(
        text=tpb.TextFiles(paths=[str(text)]), dataset_name="stories-text", context_size=32
    )
    messages = start(stack, sae_id, export_config(tokens), "from-text")
    assert messages[-1].progress.state == ppb.JOB_STATE_SUCCEEDED, messages[-1].progress.error
    assert messages[-1].result.validation.valid
    with zipfile.ZipFile(io.BytesIO(download(stack, messages[-1].progress.job_id))) as zf:
        feature = json.loads(zf.read("features/0.json"))
    assert {e["source"]["dataset"] for e in feature["activations"]} == {"stories-text"}


def test_computing_keeps_the_labels_and_records_the_stats(
    stack: Stack, sae_id: str, result: epb.ExportResult
) -> None:
    request = spb.ListFeaturesRequest(sae_id=sae_id, page_size=D_SAE)
    features = {f.feature_index: f for f in stack.records.ListFeatures(request).features}
    assert {i: (f.label, f.category) for i, f in features.items() if f.label} == LABELS
    assert features[1].max_activation > 0 and features[1].activation_frequency > 0


def test_labels_and_unscored_explanations_reach_the_prd_layout(archive: bytes) -> None:
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        doc = json.loads(zf.read("explanations/explanations.json"))
    entries = {e["feature_index"]: e for e in doc["features"]}
    assert {i: (e["label"], e["category"]) for i, e in entries.items()} == LABELS
    for entry in entries.values():
        by_method = {x["method"]: x for x in entry["explanations"]}
        assert by_method["mistudio_label"]["description"] == entry["label"]
        assert by_method["oai_token-act-pair"]["score"] is None  # never scored: not 0.0
