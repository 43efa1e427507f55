"""`mistudio-export` reaches authenticated remote services with --token / MISTUDIO_TOKEN."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.security.conftest import AliceExport, SecureStack, token_of


def cli(*args: str, token_env: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MISTUDIO_TOKEN"}
    if token_env:
        env["MISTUDIO_TOKEN"] = token_env
    return subprocess.run(
        [sys.executable, "-m", "mistudio_cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_cli_lists_the_callers_jobs_with_a_token_from_the_environment(
    secure_stack: SecureStack, alice_export: AliceExport
) -> None:
    result = cli(
        "list", "--export-address", secure_stack.export.address, token_env=token_of("alice")
    )
    assert result.returncode == 0, result.stderr
    assert alice_export.job_id in result.stdout and "owner=alice" in result.stdout


def test_cli_without_a_token_gets_one_line_naming_the_fix(
    secure_stack: SecureStack, alice_export: AliceExport
) -> None:
    result = cli("status", alice_export.job_id, "--export-address", secure_stack.export.address)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error [authorization]:")
    assert "MISTUDIO_TOKEN" in result.stderr


def test_cli_token_flag_of_another_user_does_not_reveal_the_job(
    secure_stack: SecureStack, alice_export: AliceExport
) -> None:
    address = secure_stack.export.address
    result = cli("status", alice_export.job_id, "--export-address", address,
                 "--token", token_of("mallory"))  # fmt: skip
    assert result.returncode != 0
    assert f"no export job with id {alice_export.job_id!r}" in result.stderr


def test_cli_client_certificate_without_its_key_is_a_clear_error(tmp_path: Path) -> None:
    cert = tmp_path / "me.pem"
    cert.write_text("not used", encoding="utf-8")
    result = cli("list", "--export-address", "127.0.0.1:9", "--tls-cert", str(cert))
    assert result.returncode == 2
    assert result.stderr.startswith("error [--tls-key]: --tls-cert and --tls-key go together")
