"""Send upload payload files to Neuronpedia's ``POST {base_url}/feature/upload-batch``.

A 429 answer is retried after the server's Retry-After (bounded); other failures stop the
upload at that file. Off by default: nothing is sent unless ``UploadSettings.enabled`` is set
(``--send`` on the command line); without it the command only lists what it would send. The
API key travels in the ``X-Api-Key`` header and is read from an environment variable by the
command, never from files.

    python -m mistudio_export.formats.neuronpedia_upload EXPORT/upload --send
"""

from __future__ import annotations

import argparse
import email.utils
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from mistudio_common.errors import (
    FailedPrecondition,
    InvalidArgument,
    MistudioError,
    ResourceExhausted,
    Unavailable,
)

from mistudio_export.formats.upload_payloads import (
    ENDPOINT,
    MANIFEST_FILE,
    MAX_FEATURES_PER_REQUEST,
)

DEFAULT_BASE_URL = "https://www.neuronpedia.org/api"
API_KEY_ENV = "NEURONPEDIA_API_KEY"
TOO_MANY_REQUESTS = 429


@dataclass(frozen=True, slots=True)
class UploadSettings:
    api_key: str
    base_url: str = DEFAULT_BASE_URL
    enabled: bool = False
    timeout_s: float = 120.0
    max_retries: int = 5
    """Retries of one file the API answered 429 (Too Many Requests)."""
    max_wait_s: float = 300.0
    """Longest wait before a retry, whatever Retry-After asks."""


@dataclass(frozen=True, slots=True)
class UploadResult:
    file: str
    n_features: int
    status: int
    response: str


def payload_files(folder: Path) -> list[Path]:
    """The files the manifest lists, in order, each checked to exist and fit the API limit."""
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise FailedPrecondition(
            f"no {MANIFEST_FILE} in {folder}",
            field="folder",
            fix="point at the folder write_upload_payloads wrote",
        )
    manifest = json.loads(manifest_path.read_text("utf-8"))
    files = [folder / name for name in manifest.get("files", [])]
    for path in files:
        if not path.is_file():
            raise FailedPrecondition(f"{path.name} is listed but missing", field=str(path))
    return files


def _read_body(path: Path) -> tuple[bytes, int]:
    data = path.read_bytes()
    features = json.loads(data).get("features", [])
    if not 1 <= len(features) <= MAX_FEATURES_PER_REQUEST:
        raise InvalidArgument(
            f"{path.name} holds {len(features)} features; "
            f"the API takes 1..{MAX_FEATURES_PER_REQUEST}",
            field=path.name,
            fix="rewrite the payloads with write_upload_payloads",
        )
    return data, len(features)


def retry_after_seconds(header: str | None, attempt: int) -> float:
    """How long to wait after a 429: the Retry-After header (seconds or an HTTP date), else
    1, 2, 4… seconds by attempt."""
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(header)
            except (TypeError, ValueError):
                pass
            else:
                return max(0.0, (when - datetime.now(UTC)).total_seconds())
    return float(2**attempt)


def _post(url: str, body: bytes, settings: UploadSettings) -> tuple[int, str]:
    """POSTs once, and again after each 429 (Too Many Requests) as the server asks."""
    attempt = 0
    while True:
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "X-Api-Key": settings.api_key},
        )
        try:
            with urllib.request.urlopen(request, timeout=settings.timeout_s) as response:
                return response.status, response.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            if e.code != TOO_MANY_REQUESTS or attempt == settings.max_retries:
                raise
            wait = retry_after_seconds(e.headers.get("Retry-After"), attempt)
            e.close()
            time.sleep(min(wait, settings.max_wait_s))
            attempt += 1


def upload_payloads(folder: Path, settings: UploadSettings) -> list[UploadResult]:
    """POST every payload file in manifest order; stops at the first failure."""
    if not settings.enabled:
        raise FailedPrecondition(
            "uploading to Neuronpedia is off",
            field="enabled",
            fix="set UploadSettings(enabled=True) or pass --send, after checking the payloads",
        )
    if not settings.api_key:
        raise FailedPrecondition(
            "no Neuronpedia API key",
            field="api_key",
            fix=f"copy it from your account to {API_KEY_ENV}",
        )
    url = settings.base_url.rstrip("/") + "/" + ENDPOINT
    results: list[UploadResult] = []
    for path in payload_files(folder):
        body, n = _read_body(path)
        try:
            status, text = _post(url, body, settings)
        except urllib.error.HTTPError as e:
            detail = e.read().decode("utf-8", "replace")[:500]
            done = f"{len(results)} of the files before it were accepted"
            error: type[MistudioError] = (
                ResourceExhausted
                if e.code == TOO_MANY_REQUESTS
                else FailedPrecondition
                if 400 <= e.code < 500
                else Unavailable
            )
            raise error(
                f"{url} refused {path.name}: HTTP {e.code} {detail} ({done})",
                field=path.name,
                fix="fix the cause, then resend this file and the ones after it",
            ) from e
        except (urllib.error.URLError, TimeoutError) as e:
            raise Unavailable(
                f"{url} unreachable while sending {path.name}: {e}",
                field="base_url",
                fix="check the network and base URL, then resend from this file",
            ) from e
        results.append(UploadResult(file=path.name, n_features=n, status=status, response=text))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Send upload payloads to Neuronpedia.")
    parser.add_argument("folder", type=Path, help="folder holding manifest.json")
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL)
    parser.add_argument("--api-key-env", default=API_KEY_ENV)
    parser.add_argument("--send", action="store_true", help="really send (default: list only)")
    args = parser.parse_args(argv)
    files = payload_files(args.folder)
    if not args.send:
        for path in files:
            print(f"would POST {path.name} ({_read_body(path)[1]} features) to {args.base_url}")
        print("nothing sent; add --send to upload")
        return 0
    settings = UploadSettings(
        api_key=os.environ.get(args.api_key_env, ""), base_url=args.base_url, enabled=True
    )
    for result in upload_payloads(args.folder, settings):
        print(f"{result.file}: HTTP {result.status}, {result.n_features} features")
    return 0


if __name__ == "__main__":
    sys.exit(main())
