"""`mistudio-export upload-input`: puts a local SAE folder or token file into a remote export
service's object store, for exports run where this disk is not (README, Security: inputs
without a shared disk). Prints the s3:// URI to use as the SAE's path or ``--tokens``.

The request stream is a header with each file's size and sha256, then its bytes in chunks
(the server side is ``mistudio_export.uploads``).
"""

from __future__ import annotations

import argparse
import hashlib
from collections.abc import Iterator
from pathlib import Path

from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.export.v1 import export_service_pb2_grpc as egrpc
from mistudio_common.auth import PeerCredentials
from mistudio_common.errors import InvalidArgument
from mistudio_common.server import open_channel
from mistudio_common.uploaded_inputs import SAE_FILE_NAMES, SAE_WEIGHTS_NAME

from mistudio_cli.connection import remote_credentials

EPILOG = """examples:
  mistudio-export upload-input ./my-sae --export-address host:50053     # prints s3://…/<id>
  mistudio-export upload-input tokens.npy --export-address host:50053   # prints s3://…/tokens.npy
  mistudio-export run s3://bucket/inputs/me/<id> --tokens s3://…/tokens.npy --export-address …
"""


def add_upload_input_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path",
        metavar="PATH",
        help="a SAELens folder (cfg.json + sae_weights.safetensors) or a "
        ".npy/.safetensors token file",
    )


def cmd_upload_input(args: argparse.Namespace) -> int:
    if not args.export_address:
        raise InvalidArgument(
            "upload-input sends files to a remote export service, and none is named",
            field="--export-address",
            fix="pass --export-address (or MISTUDIO_EXPORT_ADDRESS); a local run reads paths "
            "directly",
        )
    response = upload_input(args.export_address, remote_credentials(args), Path(args.path))
    print(response.uri)
    return 0


def upload_input(address: str, credentials: PeerCredentials, path: Path) -> epb.UploadInputResponse:
    """Uploads ``path``: a folder as an SAE, a file as a token file."""
    requests = sae_folder_requests(path) if path.is_dir() else token_file_requests(path)
    with open_channel(address, credentials) as channel:
        return egrpc.ExportServiceStub(channel).UploadInput(requests)  # type: ignore[no-any-return]


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
