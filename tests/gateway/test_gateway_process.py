"""`mistudio-gateway` as deployed: its own process, settings from flags, a port of its choosing."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.export.service.stack import Stack


def test_gateway_process_serves_the_api_of_the_export_service_it_is_given(
    stack: Stack, sae_id: str
) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "mistudio_gateway", "--port", "0", "--export", stack.export.address],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:
            found = re.search(r"running on (http://\S+)", line)
            if found:
                break
        else:
            raise AssertionError("the gateway exited before it listened")
        url = found.group(1)
        assert httpx.get(url + "/openapi.json").json()["info"]["title"] == "miStudio Export gateway"
        listing = httpx.get(f"{url}/api/v1/saes/{sae_id}/exports")
        assert listing.status_code == 200 and "jobs" in listing.json()
    finally:
        process.terminate()
        process.wait(timeout=10)
        assert process.stderr is not None
        process.stderr.close()


def test_an_unreadable_ca_file_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mistudio_gateway", "--tls-ca", str(tmp_path / "missing.pem")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error [tls_ca_file]:"), result.stderr
    assert "Traceback" not in result.stderr and "MISTUDIO_GATEWAY_TLS_CA_FILE" in result.stderr
