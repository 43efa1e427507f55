"""`mistudio-export upload`: an export's payloads to Neuronpedia's upload API.

Without ``--send`` it only lists what it would post. The API key comes from an environment
variable, never from a flag (flags show in process lists); 429 answers are waited out as the
API's Retry-After asks (formats/neuronpedia_upload.py).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mistudio_common.errors import InvalidArgument
from mistudio_export.formats.neuronpedia_upload import (
    API_KEY_ENV,
    DEFAULT_BASE_URL,
    UploadSettings,
    payload_files,
    upload_payloads,
)
from mistudio_export.formats.upload_payloads import MANIFEST_FILE
from mistudio_export.generate import FOLDERS
from mistudio_export.packaging import FormatKind
from mistudio_export.packaging.safe_extract import safe_extract

EPILOG = """examples:
  mistudio-export upload export.zip
  NEURONPEDIA_API_KEY=… mistudio-export upload export.zip --send
"""


def add_upload_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="export .zip, export folder or its payloads")
    parser.add_argument("--send", action="store_true", help="really send (default: list only)")
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL, help="Neuronpedia's API root")
    parser.add_argument(
        "--api-key-env", default=API_KEY_ENV, help="environment variable holding the API key"
    )


def cmd_upload(args: argparse.Namespace) -> int:
    """Lists (or with --send, posts) an export's upload payloads to Neuronpedia's upload API."""
    with upload_folder(Path(args.path)) as folder:
        files = payload_files(folder)
        if not args.send:
            for path in files:
                print(f"would POST {path.name} to {args.base_url}")
            print("nothing sent; add --send to upload")
            return 0
        settings = UploadSettings(
            api_key=os.environ.get(args.api_key_env, ""), base_url=args.base_url, enabled=True
        )
        for result in upload_payloads(folder, settings):
            print(f"{result.file}: HTTP {result.status}, {result.n_features} features")
    return 0


@contextmanager
def upload_folder(path: Path) -> Iterator[Path]:
    """The upload-payloads folder of an archive (extracted), an export folder, or itself."""
    folder_name = FOLDERS[FormatKind.NEURONPEDIA_UPLOAD]
    if path.is_dir():
        nested = path / folder_name
        yield nested if (nested / MANIFEST_FILE).is_file() else path
        return
    if not zipfile.is_zipfile(path):
        raise InvalidArgument(
            f"{path} is neither an export archive nor a folder",
            field="PATH",
            fix="give the export's .zip, its folder, or its upload-payloads folder",
        )
    with tempfile.TemporaryDirectory(prefix="mistudio-upload-") as scratch:
        extraction = safe_extract(
            path, Path(scratch), wanted=lambda name: f"/{folder_name}/" in f"/{name}"
        )
        if not extraction.ok:
            raise InvalidArgument(
                f"{path}: {extraction.refused}",
                field="PATH",
                fix="check where the archive came from; nothing was unpacked",
            )
        manifests = sorted(Path(scratch).rglob(f"{folder_name}/{MANIFEST_FILE}"))
        if not manifests:
            raise InvalidArgument(
                f"{path} holds no {folder_name}/",
                field="PATH",
                fix="export with --format neuronpedia (or both) to get upload payloads",
            )
        yield manifests[0].parent
