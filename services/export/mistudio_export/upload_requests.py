"""A local SAE folder or token file as an UploadInput request stream (the client side of
``uploads``): a header with each file's size and sha256, then its bytes in chunks."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

from mistudio.export.v1 import export_service_pb2 as epb
from mistudio_common.errors import InvalidArgument
from mistudio_common.uploaded_inputs import SAE_FILE_NAMES, SAE_WEIGHTS_NAME

CHUNK_BYTES = 1 << 20
"""Bytes per request message; far below the transport's message limit."""


def sae_folder_requests(folder: Path) -> Iterator[epb.UploadInputRequest]:
    """The SAELens files of ``folder`` (cfg.json, sae_weights.safetensors, sparsity)."""
    files = [folder / name for name in SAE_FILE_NAMES if (folder / name).is_file()]
    if folder / SAE_WEIGHTS_NAME not in files:
        raise InvalidArgument(
            f"{folder} holds no {SAE_WEIGHTS_NAME}",
            field="sae",
            fix="name a SAELens folder (cfg.json + sae_weights.safetensors)",
        )
    for path in files:
        yield from file_requests(path, epb.UPLOAD_KIND_SAE_FILE)


def token_file_requests(path: Path) -> Iterator[epb.UploadInputRequest]:
    return file_requests(path, epb.UPLOAD_KIND_TOKEN_FILE)


def file_requests(
    path: Path, kind: epb.UploadKind.ValueType, name: str = ""
) -> Iterator[epb.UploadInputRequest]:
    """One file: hashed in a first pass, so the header can carry the digest."""
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(CHUNK_BYTES):
            digest.update(block)
        size = source.tell()
        header = epb.UploadFileHeader(
            kind=kind, name=name or path.name, size=size, sha256=digest.hexdigest()
        )
        yield epb.UploadInputRequest(file=header)
        source.seek(0)
        while block := source.read(CHUNK_BYTES):
            yield epb.UploadInputRequest(chunk=block)
