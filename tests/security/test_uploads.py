"""Inputs that need no shared disk: an SAE folder and a token file uploaded through the export
service (a real moto S3 bucket), exported from their s3:// URIs exactly as from paths; hostile
uploads are refused with nothing stored, and compute verifies what it fetches."""

from __future__ import annotations

import hashlib
import os
import time
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.export.v1 import export_service_pb2_grpc as egrpc
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio_cli.main import main as cli
from mistudio_cli.upload_input_command import sae_folder_requests, token_file_requests
from mistudio_common.errors import InvalidArgument
from mistudio_common.retention import FolderSweeper
from mistudio_common.s3_address import parse_s3_url
from mistudio_common.server import insecure_channel
from mistudio_compute.input_files import InputKind
from mistudio_compute.object_inputs import ObjectInputs
from mistudio_export.object_store.s3 import S3ObjectStore
from mistudio_export.server import build_export_server
from mistudio_export.uploads import UploadLimits, Uploads
from mistudio_store import convert

from tests.export.service.errors import details
from tests.export.service.stack import (
    STORIES_REF,
    Stack,
    export_config,
    register_sae,
    run_to_end,
    start_stack,
    token_source,
    write_sae_folder,
    write_tokens,
)
from tests.moto_s3 import ACCESS_KEY, SECRET_KEY, bucket_url, moto_server

BUCKET = "uploads-suite"
HOUR = 3600.0


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def s3_stack(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("uploads") / "data"
    running = start_stack(data_dir, bucket_url(s3_endpoint, BUCKET), (ACCESS_KEY, SECRET_KEY))
    yield running
    running.stop()


@pytest.fixture(scope="module")
def bucket(s3_endpoint: str) -> S3ObjectStore:
    return S3ObjectStore(
        s3_endpoint, ACCESS_KEY, SECRET_KEY, BUCKET, secure=False, region="us-east-1"
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("inputs")
    return write_sae_folder(folder / "sae"), write_tokens(folder / "tokens.npy", rows=8)


def upload(stack: Stack, requests: Iterator[epb.UploadInputRequest]) -> epb.UploadInputResponse:
    return stack.exports.UploadInput(requests)  # type: ignore[no-any-return]


def upload_error(exports: egrpc.ExportServiceStub, requests: list[Any]) -> dict[str, Any]:
    with pytest.raises(grpc.RpcError) as caught:
        exports.UploadInput(iter(requests))
    return details(caught.value)


def stored_inputs(bucket: S3ObjectStore) -> list[str]:
    return [obj.key for obj in bucket.list("inputs/")]


def staged(stack: Stack) -> list[Path]:
    return [p for p in (stack.data_dir / "uploads").rglob("*") if p.is_file()]


def archive_of(stack: Stack, sae_id: str, tokens: tpb.TokenSource, request_id: str) -> bytes:
    request = epb.StartExportRequest(
        sae_id=sae_id, request_id=request_id, config=export_config(tokens)
    )
    last = run_to_end(stack.exports.StartExport(request))[-1]
    assert last.progress.state == ppb.JOB_STATE_SUCCEEDED, last.progress.error
    stream = stack.exports.DownloadExport(epb.DownloadExportRequest(job_id=last.progress.job_id))
    return b"".join(message.chunk for message in stream)


def header(name: str, data: bytes, kind: int = epb.UPLOAD_KIND_TOKEN_FILE, **changes: Any) -> Any:
    fields: dict[str, Any] = dict(
        kind=kind, name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest()
    )
    return epb.UploadInputRequest(file=epb.UploadFileHeader(**{**fields, **changes}))


def chunk(data: bytes) -> epb.UploadInputRequest:
    return epb.UploadInputRequest(chunk=data)


def test_uploaded_sae_and_tokens_export_the_same_archive_as_their_paths(
    s3_stack: Stack, inputs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The archive records when its SAE was registered; both registrations get one time."""
    registered = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    monkeypatch.setattr(convert, "now", lambda: registered)
    folder, tokens_path = inputs
    register_sae(s3_stack, "uploaded-sae", str(folder))
    by_path = archive_of(s3_stack, "uploaded-sae", token_source(tokens_path), "by-path")

    sae = upload(s3_stack, sae_folder_requests(folder))
    tokens = upload(s3_stack, token_file_requests(tokens_path))
    assert sae.uri == f"s3://{BUCKET}/inputs/local/{sae.input_id}"
    assert tokens.uri == f"s3://{BUCKET}/inputs/local/{tokens.input_id}/tokens.npy"
    assert tokens.size_bytes == tokens_path.stat().st_size

    # Registered again under the same id, so its cached dashboards are gone and every one is
    # computed anew from the fetched files.
    s3_stack.records.DeleteSae(spb.DeleteSaeRequest(sae_id="uploaded-sae"))
    register_sae(s3_stack, "uploaded-sae", sae.uri)
    by_upload = archive_of(s3_stack, "uploaded-sae", token_source_uri(tokens.uri), "by-upload")
    assert by_upload == by_path
    cache = s3_stack.data_dir / "compute" / "uploads" / "local"
    assert (cache / sae.input_id / "sae_weights.safetensors").read_bytes() == (
        folder / "sae_weights.safetensors"
    ).read_bytes()


def token_source_uri(uri: str) -> tpb.TokenSource:
    source = token_source(Path("unused"))
    source.token_file = uri
    return source


def test_the_upload_and_its_manifest_are_in_the_bucket_under_the_callers_namespace(
    s3_stack: Stack, bucket: S3ObjectStore, inputs: tuple[Path, Path]
) -> None:
    sae = upload(s3_stack, sae_folder_requests(inputs[0]))
    keys = [key for key in stored_inputs(bucket) if sae.input_id in key]
    prefix = f"inputs/local/{sae.input_id}"
    assert keys == [
        f"{prefix}/cfg.json",
        f"{prefix}/manifest.json",
        f"{prefix}/sae_weights.safetensors",
    ]
    assert not staged(s3_stack)


TOKENS = b"\x93NUMPY fake token bytes"


@pytest.mark.parametrize(
    ("requests", "field", "why"),
    [
        ([header("tokens.npy", TOKENS, size=len(TOKENS) + 5), chunk(TOKENS)], "chunk", "truncated"),
        ([header("tokens.npy", TOKENS, size=4), chunk(TOKENS)], "chunk", "more than"),
        ([header("tokens.npy", TOKENS, sha256="0" * 64), chunk(TOKENS)], "file.sha256", "hash"),
        ([header("tokens.npy", TOKENS, sha256="not-hex"), chunk(TOKENS)], "file.sha256", "hex"),
        ([header("../tokens.npy", TOKENS), chunk(TOKENS)], "file.name", "token file name"),
        ([header("sub/tokens.npy", TOKENS), chunk(TOKENS)], "file.name", "token file name"),
        ([header("/etc/passwd", TOKENS), chunk(TOKENS)], "file.name", "token file name"),
        ([header(".tokens.npy", TOKENS), chunk(TOKENS)], "file.name", "token file name"),
        (
            [header("../cfg.json", TOKENS, kind=epb.UPLOAD_KIND_SAE_FILE), chunk(TOKENS)],
            "file.name",
            "SAELens folder",
        ),
        (
            [header("cfg.json", TOKENS, kind=epb.UPLOAD_KIND_SAE_FILE), chunk(TOKENS)],
            "file.name",
            "needs sae_weights.safetensors",
        ),
        ([header("tokens.npy", TOKENS, kind=0), chunk(TOKENS)], "file.kind", "no kind"),
        ([chunk(TOKENS)], "chunk", "before any file header"),
        ([], "file", "no file"),
        (
            [header("a.npy", TOKENS), chunk(TOKENS), header("b.npy", TOKENS), chunk(TOKENS)],
            "file.name",
            "one file",
        ),
    ],
)
def test_a_hostile_upload_is_refused_and_nothing_is_stored(
    s3_stack: Stack, bucket: S3ObjectStore, requests: list[Any], field: str, why: str
) -> None:
    before = stored_inputs(bucket)
    found = upload_error(s3_stack.exports, requests)
    assert found["code"] == grpc.StatusCode.INVALID_ARGUMENT
    assert found["fields"] == [field]
    assert why in found["message"]
    assert stored_inputs(bucket) == before
    assert not staged(s3_stack)


SMALL_BUCKET = "small-limits"


@pytest.fixture(scope="module")
def small_limits(s3_stack: Stack, s3_endpoint: str) -> Iterator[egrpc.ExportServiceStub]:
    """A second export service, over a bucket of its own, that accepts 1 kB token files and
    keeps at most 4 kB per owner."""
    settings = s3_stack.settings().model_copy(
        update={
            "object_store_url": bucket_url(s3_endpoint, SMALL_BUCKET),
            "max_upload_token_file_bytes": 1000,
            "max_upload_bytes_per_owner": 4000,
        }
    )
    server = build_export_server(settings)
    with insecure_channel(server.address) as channel:
        yield egrpc.ExportServiceStub(channel)
    server.stop(grace_seconds=1.0)


@pytest.fixture(scope="module")
def small_bucket(s3_endpoint: str) -> S3ObjectStore:
    return S3ObjectStore(
        s3_endpoint, ACCESS_KEY, SECRET_KEY, SMALL_BUCKET, secure=False, region="us-east-1"
    )


def test_an_oversized_file_is_refused_before_its_bytes_are_read(
    small_limits: egrpc.ExportServiceStub, small_bucket: S3ObjectStore
) -> None:
    before = stored_inputs(small_bucket)
    big = b"x" * 1001
    found = upload_error(small_limits, [header("tokens.npy", big), chunk(big)])
    assert found["code"] == grpc.StatusCode.INVALID_ARGUMENT
    assert found["fields"] == ["file.size"]
    assert "MISTUDIO_EXPORT_MAX_UPLOAD_TOKEN_FILE_BYTES" in found["message"]
    assert stored_inputs(small_bucket) == before


def test_an_owner_over_its_total_is_refused_until_it_deletes_an_upload(
    small_limits: egrpc.ExportServiceStub, small_bucket: S3ObjectStore
) -> None:
    data = b"z" * 900
    kept = [small_limits.UploadInput(iter([header("t.npy", data), chunk(data)])) for _ in range(3)]
    before = stored_inputs(small_bucket)  # 2700 bytes and three manifests: 900 more is too much
    found = upload_error(small_limits, [header("t.npy", data), chunk(data)])
    assert found["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "MISTUDIO_EXPORT_MAX_UPLOAD_BYTES_PER_OWNER" in found["message"]
    assert stored_inputs(small_bucket) == before
    small_limits.DeleteInput(epb.DeleteInputRequest(uri=kept[0].uri))
    assert small_limits.UploadInput(iter([header("t.npy", data), chunk(data)])).uri


def test_a_cancelled_upload_stores_nothing(s3_stack: Stack, bucket: S3ObjectStore) -> None:
    before = stored_inputs(bucket)
    data = b"y" * 100

    def requests() -> Iterator[epb.UploadInputRequest]:
        yield header("tokens.npy", data + data)
        yield chunk(data)
        future.cancel()
        yield chunk(data)

    future = s3_stack.exports.UploadInput.future(requests())
    with pytest.raises(grpc.FutureCancelledError):
        future.result()
    assert stored_inputs(bucket) == before


def test_compute_refuses_an_upload_changed_in_the_bucket(
    s3_stack: Stack, bucket: S3ObjectStore, inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    """Compute checks what it fetches against the manifest the upload wrote."""
    register_sae(s3_stack, "tampered-tokens", str(inputs[0]))
    tokens = upload(s3_stack, token_file_requests(inputs[1]))
    tampered = write_tokens(tmp_path / "tokens.npy", rows=8, seed=7)
    key = tokens.uri.removeprefix(f"s3://{BUCKET}/")
    bucket.put_file(key, tampered)
    request = epb.StartExportRequest(
        sae_id="tampered-tokens", config=export_config(token_source_uri(tokens.uri))
    )
    with pytest.raises(grpc.RpcError) as caught:
        run_to_end(s3_stack.exports.StartExport(request))
    found = details(caught.value)
    assert found["code"] == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not match its manifest" in found["message"]
    cached = s3_stack.data_dir / "compute" / "uploads" / "local" / tokens.input_id
    assert not (cached / "tokens.npy").exists()


def test_a_uri_outside_the_uploads_is_refused(s3_stack: Stack, inputs: tuple[Path, Path]) -> None:
    register_sae(s3_stack, "outside-uploads", str(inputs[0]))
    request = epb.StartExportRequest(
        sae_id="outside-uploads",
        config=export_config(token_source_uri(f"s3://{BUCKET}/exports/some-job/archive.zip")),
    )
    with pytest.raises(grpc.RpcError) as caught:
        run_to_end(s3_stack.exports.StartExport(request))
    found = details(caught.value)
    assert found["code"] == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not name an uploaded input" in found["message"]


def test_compute_refuses_an_upload_over_its_own_limit_before_downloading_it(
    s3_stack: Stack, s3_endpoint: str, inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    tokens = upload(s3_stack, token_file_requests(inputs[1]))
    reader = ObjectInputs(
        parse_s3_url(bucket_url(s3_endpoint, BUCKET)), ACCESS_KEY, SECRET_KEY, tmp_path / "cache"
    )
    limits = {kind: 100 for kind in InputKind}
    with pytest.raises(InvalidArgument, match="MISTUDIO_COMPUTE_MAX_TOKEN_FILE_BYTES"):
        reader.fetch(tokens.uri, "tokens.token_file", limits)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_the_cli_uploads_local_files_and_exports_from_them(
    s3_stack: Stack, inputs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    remote = ["--export-address", s3_stack.export.address]
    folder, tokens_path = inputs
    assert cli(["upload-input", str(folder), *remote]) == 0
    sae_uri = capsys.readouterr().out.strip()
    assert cli(["upload-input", str(tokens_path), *remote]) == 0
    tokens_uri = capsys.readouterr().out.strip()
    assert tokens_uri.endswith("/tokens.npy")

    archive = tmp_path / "from-uploads.zip"
    peers = ["--store-address", s3_stack.store.address]
    peers += ["--compute-address", s3_stack.compute.address]
    run = ["run", sae_uri, "--sae-id", "cli-uploaded", "--tokens", tokens_uri]
    run += ["--model", STORIES_REF, "--output", str(archive), "--device", "cpu"]
    assert cli([*run, *remote, *peers]) == 0
    assert zipfile.is_zipfile(archive)
    registered = s3_stack.records.GetSae(spb.GetSaeRequest(sae_id="cli-uploaded")).sae
    assert registered.weights_uri == sae_uri


def test_the_cli_needs_a_remote_service_to_upload_to(
    inputs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(["upload-input", str(inputs[1]), "--export-address", ""]) != 0
    assert "--export-address" in capsys.readouterr().err


def test_a_deleted_upload_is_gone_from_the_bucket_and_from_computes_cache(
    s3_stack: Stack, bucket: S3ObjectStore, inputs: tuple[Path, Path]
) -> None:
    register_sae(s3_stack, "deleted-tokens", str(inputs[0]))
    tokens = upload(s3_stack, token_file_requests(inputs[1]))
    config = export_config(token_source_uri(tokens.uri))
    request = epb.StartExportRequest(sae_id="deleted-tokens", request_id="before", config=config)
    assert run_to_end(s3_stack.exports.StartExport(request))[-1].HasField("result")

    deleted = s3_stack.exports.DeleteInput(epb.DeleteInputRequest(uri=tokens.uri))
    assert deleted.size_bytes == inputs[1].stat().st_size
    assert not [key for key in stored_inputs(bucket) if tokens.input_id in key]
    again = epb.StartExportRequest(sae_id="deleted-tokens", request_id="after", config=config)
    with pytest.raises(grpc.RpcError) as caught:
        run_to_end(s3_stack.exports.StartExport(again))
    assert "no uploaded input" in details(caught.value)["message"]
    cached = s3_stack.data_dir / "compute" / "uploads" / "local" / tokens.input_id
    assert not cached.exists()
    with pytest.raises(grpc.RpcError) as twice:
        s3_stack.exports.DeleteInput(epb.DeleteInputRequest(uri=tokens.uri))
    assert details(twice.value)["code"] == grpc.StatusCode.NOT_FOUND


def leftover_staging(root: Path, age_seconds: float) -> Path:
    """A staging folder as a crash in the middle of an upload leaves it."""
    folder = root / f"upload-crashed-{int(age_seconds)}"
    folder.mkdir(parents=True)
    (folder / "sae_weights.safetensors").write_bytes(b"half an upload")
    stamp = time.time() - age_seconds
    os.utime(folder, (stamp, stamp))
    return folder


def test_an_export_service_removes_staging_a_crash_left_at_start(
    s3_stack: Stack, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    crashed = leftover_staging(data_dir / "uploads", age_seconds=5)
    server = build_export_server(s3_stack.settings().model_copy(update={"data_dir": data_dir}))
    try:
        assert not crashed.exists()
    finally:
        server.stop(grace_seconds=1.0)


def test_the_sweeper_removes_old_leftover_staging_but_never_a_live_upload(
    bucket: S3ObjectStore, tmp_path: Path
) -> None:
    uploads = Uploads(bucket, UploadLimits(1, 1, 1, 1), tmp_path / "uploads")
    live = uploads.receive("alice")
    live_folder = next((tmp_path / "uploads").iterdir())
    stamp = time.time() - 2 * HOUR
    os.utime(live_folder, (stamp, stamp))
    old = leftover_staging(tmp_path / "uploads", age_seconds=2 * HOUR)
    recent = leftover_staging(tmp_path / "uploads", age_seconds=60)
    sweeper = FolderSweeper(uploads.staging_root, HOUR, uploads.staging_removable, 600)
    assert sweeper.sweep() == [old.name]
    assert live_folder.is_dir() and recent.is_dir()
    live.discard()
    assert not live_folder.exists()
    assert sweeper.sweep_leftovers() == [recent.name]
