"""Compute opens only regular files under its input roots: every escape an attacker would try
is refused before a job exists, the message carries no file content, and nothing changes."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

import grpc
import pytest
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio.compute.v1 import compute_service_pb2_grpc as cgrpc
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio_common.server import insecure_channel

from tests.export.service.errors import details
from tests.export.service.stack import (
    STORIES_REF,
    Stack,
    export_config,
    register_sae,
    run_to_end,
    write_sae_folder,
)
from tests.security.unchanged import assert_unchanged, snapshot

SECRET = "TOP-SECRET-CONTENT-4711"


def start_error(stack: Stack, sae_id: str, tokens: tpb.TokenSource) -> dict[str, Any]:
    request = epb.StartExportRequest(sae_id=sae_id, config=export_config(tokens))
    with pytest.raises(grpc.RpcError) as caught:
        run_to_end(stack.exports.StartExport(request))
    return details(caught.value)


def validate_error(stack: Stack, request: cpb.ValidateSaeRequest) -> dict[str, Any]:
    with insecure_channel(stack.compute.address) as channel, pytest.raises(grpc.RpcError) as caught:
        cgrpc.ComputeServiceStub(channel).ValidateSae(request)
    return details(caught.value)


def text(*paths: str | Path) -> tpb.TokenSource:
    return tpb.TokenSource(text=tpb.TextFiles(paths=[str(p) for p in paths]), context_size=16)


def secret_file(folder: Path, name: str = "secret.txt") -> Path:
    path = folder / name
    path.write_text(f"{SECRET}\n" * 4)
    path.chmod(0o600)
    return path


def assert_refused_text(
    stack: Stack, sae_id: str, workdir: Path, path: str | Path, why: str
) -> None:
    before = snapshot(stack, workdir)
    found = start_error(stack, sae_id, text(path))
    assert found["code"] == grpc.StatusCode.INVALID_ARGUMENT
    assert found["fields"] == ["config.tokens.text.paths"]
    assert why in found["message"]
    assert SECRET not in found["message"] and "root:" not in found["message"]
    assert_unchanged(stack, workdir, before)


@pytest.mark.parametrize("path", ["/etc/passwd", "/proc/self/environ", "/dev/zero"])
def test_system_file_as_text_is_outside_the_roots(
    stack: Stack, sae_id: str, workdir: Path, path: str
) -> None:
    assert_refused_text(stack, sae_id, workdir, path, "outside")


def test_private_file_outside_the_roots_is_refused_as_text(
    stack: Stack, sae_id: str, workdir: Path, outside: Path
) -> None:
    path = secret_file(outside)
    assert_refused_text(stack, sae_id, workdir, path, "outside")


def test_private_file_outside_the_roots_is_refused_as_token_file(
    stack: Stack, sae_id: str, workdir: Path, outside: Path
) -> None:
    path = secret_file(outside, "secret.npy")
    before = snapshot(stack, workdir)
    found = start_error(stack, sae_id, tpb.TokenSource(token_file=str(path)))
    assert found["code"] == grpc.StatusCode.INVALID_ARGUMENT
    assert found["fields"] == ["config.tokens.token_file"]
    assert SECRET not in found["message"]
    assert_unchanged(stack, workdir, before)


def test_symlink_inside_a_root_pointing_outside_is_refused(
    stack: Stack, sae_id: str, workdir: Path, root: Path, outside: Path
) -> None:
    link = root / "innocent.txt"
    link.symlink_to(secret_file(outside, "linked.txt"))
    assert_refused_text(stack, sae_id, workdir, link, "outside")


def test_dot_dot_traversal_out_of_a_root_is_refused(
    stack: Stack, sae_id: str, workdir: Path, root: Path, outside: Path
) -> None:
    secret_file(outside, "climbed.txt")
    climbing = f"{root}/data/../../outside/climbed.txt"
    assert_refused_text(stack, sae_id, workdir, climbing, "outside")


def test_fifo_inside_a_root_is_not_a_regular_file(
    stack: Stack, sae_id: str, workdir: Path, root: Path
) -> None:
    fifo = root / "pipe.txt"
    os.mkfifo(fifo)
    assert_refused_text(stack, sae_id, workdir, fifo, "not a regular file")


def test_llama2c_reference_to_system_files_is_refused(
    stack: Stack, sae_id: str, root: Path, workdir: Path
) -> None:
    request = cpb.ValidateSaeRequest(
        sae=cpb.SaeReference(files=cpb.SaeFiles(path=str(root / "sae"))),
        model_id="llama2c:/etc/shadow?tokenizer=/etc/shadow",
    )
    before = snapshot(stack, workdir)
    found = validate_error(stack, request)
    assert found["code"] == grpc.StatusCode.INVALID_ARGUMENT
    assert found["fields"] == ["model_id"]
    assert "outside" in found["message"]
    assert_unchanged(stack, workdir, before)


def test_bad_llama2c_header_message_carries_no_file_bytes(
    stack: Stack, sae_id: str, root: Path, workdir: Path
) -> None:
    fake = root / "fake.bin"
    fake.write_bytes(struct.pack("<7i", 1234567, 7654321, -5555555, 3, 3, 512, 0) + bytes(64))
    before = snapshot(stack, workdir)
    tokenizer = STORIES_REF.partition("?tokenizer=")[2]
    request = cpb.ValidateSaeRequest(
        sae=cpb.SaeReference(files=cpb.SaeFiles(path=str(root / "sae"))),
        model_id=f"llama2c:{fake}?tokenizer={tokenizer}",
    )
    found = validate_error(stack, request)
    assert found["code"] == grpc.StatusCode.INVALID_ARGUMENT
    assert not any(n in found["message"] for n in ("1234567", "7654321", "5555555"))
    assert_unchanged(stack, workdir, before)


def test_sae_folder_outside_the_roots_is_refused(
    stack: Stack, sae_id: str, workdir: Path, outside: Path
) -> None:
    folder = write_sae_folder(outside / "sae")
    before = snapshot(stack, workdir)
    request = cpb.ValidateSaeRequest(
        sae=cpb.SaeReference(files=cpb.SaeFiles(path=str(folder))), model_id=STORIES_REF
    )
    found = validate_error(stack, request)
    assert found["code"] == grpc.StatusCode.INVALID_ARGUMENT
    assert found["fields"] == ["sae.files.path"]
    assert_unchanged(stack, workdir, before)


def test_registered_sae_outside_the_roots_fails_the_export_before_a_job(
    stack: Stack, workdir: Path, outside: Path, tokens: tpb.TokenSource
) -> None:
    folder = write_sae_folder(outside / "registered")
    register_sae(stack, "outside-sae", str(folder))
    before = snapshot(stack, workdir)
    request = epb.StartExportRequest(sae_id="outside-sae", config=export_config(tokens))
    with pytest.raises(grpc.RpcError) as caught:
        run_to_end(stack.exports.StartExport(request))
    found = details(caught.value)
    assert found["code"] == grpc.StatusCode.FAILED_PRECONDITION
    assert any("outside" in description for _, description in found["precondition"])
    assert_unchanged(stack, workdir, before)


def test_feature_dashboard_computed_on_demand_cannot_read_passwd(
    stack: Stack, sae_id: str, workdir: Path
) -> None:
    before = snapshot(stack, workdir)
    request = epb.GetFeatureDashboardRequest(
        sae_id=sae_id, feature_index=0, tokens=text("/etc/passwd"), compute_if_missing=True
    )
    with pytest.raises(grpc.RpcError) as caught:
        stack.exports.GetFeatureDashboard(request)
    found = details(caught.value)
    assert found["code"] == grpc.StatusCode.INVALID_ARGUMENT
    assert "outside" in found["message"] and "root:" not in found["message"]
    assert_unchanged(stack, workdir, before)
