"""Uploads belong to their uploader: they are kept under its namespace, and another user naming
them (as tokens, or as an SAE's weights) gets NOT_FOUND, as for an upload that does not exist.
A stack that demands tokens, over a real moto S3 bucket."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio_cli.upload_input_command import sae_folder_requests, token_file_requests

from tests.export.service.errors import details
from tests.export.service.stack import (
    STORIES_DIR,
    export_config,
    run_to_end,
    token_source,
    write_sae_folder,
    write_tokens,
)
from tests.moto_s3 import ACCESS_KEY, SECRET_KEY, bucket_url, moto_server
from tests.security.conftest import SecureStack, sae_message, token_of, write_token_file

BUCKET = "owner-uploads"


@pytest.fixture(scope="module")
def owners_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    from mistudio_compute.config import ComputeSettings
    from mistudio_compute.server import build_compute_server
    from mistudio_export.config import ExportSettings
    from mistudio_export.server import build_export_server
    from mistudio_store.config import StoreSettings
    from mistudio_store.server import build_store_server

    workdir = tmp_path_factory.mktemp("owners")
    token_file = write_token_file(workdir / "tokens.txt")
    data_dir = workdir / "data"
    with moto_server() as endpoint:
        url = bucket_url(endpoint, BUCKET)
        store = build_store_server(
            StoreSettings(data_dir=data_dir, port=0, auth_token_file=token_file)
        )
        compute = build_compute_server(
            ComputeSettings(
                port=0,
                store_address=store.address,
                data_dir=data_dir,
                input_roots=(STORIES_DIR,),
                device="cpu",
                auth_token_file=token_file,
                service_token=token_of("compute"),
                object_store_url=url,
                s3_access_key=ACCESS_KEY,
                s3_secret_key=SECRET_KEY,
            )
        )
        export = build_export_server(
            ExportSettings(
                port=0,
                store_address=store.address,
                compute_address=compute.address,
                data_dir=data_dir,
                object_store_url=url,
                s3_access_key=ACCESS_KEY,
                s3_secret_key=SECRET_KEY,
                features_per_batch=8,
                auth_token_file=token_file,
                service_token=token_of("export"),
            )
        )
        stack = SecureStack(data_dir, "sqlite", store, compute, export)
        yield stack
        stack.stop()


@pytest.fixture(scope="module")
def alice_uploads(
    owners_stack: SecureStack, tmp_path_factory: pytest.TempPathFactory
) -> tuple[epb.UploadInputResponse, epb.UploadInputResponse]:
    """Alice uploads an SAE folder and a token file, registers the SAE and exports it."""
    folder = tmp_path_factory.mktemp("alice-files")
    exports = owners_stack.exports("alice")
    sae = exports.UploadInput(sae_folder_requests(write_sae_folder(folder / "sae")))
    tokens = exports.UploadInput(token_file_requests(write_tokens(folder / "t.npy", rows=8)))
    owners_stack.records("alice").CreateSae(
        spb.CreateSaeRequest(sae=sae_message("alice-uploaded", sae.uri))
    )
    return sae, tokens


def uri_tokens(uri: str) -> Any:
    source = token_source(Path("unused"))
    source.token_file = uri
    return source


def test_uploads_are_kept_under_the_uploaders_name(
    alice_uploads: tuple[epb.UploadInputResponse, epb.UploadInputResponse],
) -> None:
    sae, tokens = alice_uploads
    assert sae.uri.startswith(f"s3://{BUCKET}/inputs/alice/")
    assert tokens.uri.startswith(f"s3://{BUCKET}/inputs/alice/")


def test_the_uploader_exports_from_its_uploads(
    owners_stack: SecureStack,
    alice_uploads: tuple[epb.UploadInputResponse, epb.UploadInputResponse],
) -> None:
    request = epb.StartExportRequest(
        sae_id="alice-uploaded",
        request_id="alice-upload-1",
        config=export_config(uri_tokens(alice_uploads[1].uri), device="cpu", batch_size=4),
    )
    last = run_to_end(owners_stack.exports("alice").StartExport(request))[-1]
    assert last.progress.state == ppb.JOB_STATE_SUCCEEDED, last.progress.error


def test_another_users_tokens_are_not_found(
    owners_stack: SecureStack,
    alice_uploads: tuple[epb.UploadInputResponse, epb.UploadInputResponse],
    tmp_path: Path,
) -> None:
    mallory = owners_stack.exports("mallory")
    mine = mallory.UploadInput(sae_folder_requests(write_sae_folder(tmp_path / "sae")))
    owners_stack.records("mallory").CreateSae(
        spb.CreateSaeRequest(sae=sae_message("mallory-sae", mine.uri))
    )
    request = epb.StartExportRequest(
        sae_id="mallory-sae", config=export_config(uri_tokens(alice_uploads[1].uri))
    )
    with pytest.raises(grpc.RpcError) as caught:
        run_to_end(mallory.StartExport(request))
    found = details(caught.value)
    assert found["code"] == grpc.StatusCode.NOT_FOUND
    assert "no uploaded input" in found["message"]


def test_an_sae_registered_on_another_users_upload_is_not_found(
    owners_stack: SecureStack,
    alice_uploads: tuple[epb.UploadInputResponse, epb.UploadInputResponse],
    tmp_path: Path,
) -> None:
    mallory = owners_stack.exports("mallory")
    tokens = mallory.UploadInput(token_file_requests(write_tokens(tmp_path / "t.npy", rows=8)))
    owners_stack.records("mallory").CreateSae(
        spb.CreateSaeRequest(sae=sae_message("mallory-borrows", alice_uploads[0].uri))
    )
    request = epb.StartExportRequest(
        sae_id="mallory-borrows", config=export_config(uri_tokens(tokens.uri))
    )
    with pytest.raises(grpc.RpcError) as caught:
        run_to_end(mallory.StartExport(request))
    assert details(caught.value)["code"] == grpc.StatusCode.NOT_FOUND


def test_validating_another_users_upload_at_compute_is_not_found(
    owners_stack: SecureStack,
    alice_uploads: tuple[epb.UploadInputResponse, epb.UploadInputResponse],
) -> None:
    request = cpb.ValidateSaeRequest(
        sae=cpb.SaeReference(files=cpb.SaeFiles(path=alice_uploads[0].uri))
    )
    with pytest.raises(grpc.RpcError) as caught:
        owners_stack.computation("mallory").ValidateSae(request)
    assert details(caught.value)["code"] == grpc.StatusCode.NOT_FOUND


def test_another_user_cannot_delete_an_upload(
    owners_stack: SecureStack,
    alice_uploads: tuple[epb.UploadInputResponse, epb.UploadInputResponse],
) -> None:
    request = epb.DeleteInputRequest(uri=alice_uploads[1].uri)
    with pytest.raises(grpc.RpcError) as caught:
        owners_stack.exports("mallory").DeleteInput(request)
    assert details(caught.value)["code"] == grpc.StatusCode.NOT_FOUND
    tokens = uri_tokens(alice_uploads[1].uri)
    request_again = epb.StartExportRequest(
        sae_id="alice-uploaded",
        request_id="alice-upload-2",
        config=export_config(tokens, device="cpu", batch_size=4),
    )
    last = run_to_end(owners_stack.exports("alice").StartExport(request_again))[-1]
    assert last.progress.state == ppb.JOB_STATE_SUCCEEDED, last.progress.error
