"""The gateway reaches an export service that speaks only TLS, checking it against the CA."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from mistudio_common.server import RunningServer

from scripts.make_deploy_secrets import Authority
from tests.gateway.server import running_gateway
from tests.security.conftest import token_of, write_token_file


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority(tmp_path_factory.mktemp("gateway-pki"))


@pytest.fixture(scope="module")
def tls_export(ca: Authority, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """Store, compute and export on TLS with tokens (they call each other over TLS too)."""
    from mistudio_compute.config import ComputeSettings
    from mistudio_compute.server import build_compute_server
    from mistudio_export.config import ExportSettings
    from mistudio_export.server import build_export_server
    from mistudio_store.config import StoreSettings
    from mistudio_store.server import build_store_server

    folder = tmp_path_factory.mktemp("tls-stack")
    tokens = write_token_file(folder / "tokens.txt")

    def tls(name: str) -> dict[str, Path]:
        issued = ca.issue(name)
        return {"tls_cert_file": issued.cert, "tls_key_file": issued.key, "tls_ca_file": ca.cert}

    store = build_store_server(
        StoreSettings(data_dir=folder, port=0, auth_token_file=tokens, **tls("store"))
    )
    compute = build_compute_server(
        ComputeSettings(
            port=0,
            store_address=f"localhost:{store.port}",
            data_dir=folder,
            device="cpu",
            auth_token_file=tokens,
            service_token=token_of("compute"),
            **tls("compute"),
        )
    )
    export = build_export_server(
        ExportSettings(
            port=0,
            store_address=f"localhost:{store.port}",
            compute_address=f"localhost:{compute.port}",
            data_dir=folder,
            auth_token_file=tokens,
            service_token=token_of("export"),
            **tls("export"),
        )
    )
    yield export
    for server in (export, compute, store):
        server.stop(0)


def test_gateway_with_the_ca_reaches_the_tls_export_service(
    ca: Authority, tls_export: RunningServer
) -> None:
    with running_gateway(f"localhost:{tls_export.port}", tls_ca=ca.cert.read_bytes()) as url:
        response = httpx.get(
            f"{url}/api/v1/saes/s/export/neuronpedia/status/no-such-job",
            headers={"Authorization": f"Bearer {token_of('alice')}"},
        )
    assert response.status_code == 404, response.text  # the service answered, over TLS


def test_gateway_without_the_ca_cannot_reach_a_tls_export_service(
    tls_export: RunningServer,
) -> None:
    with running_gateway(f"localhost:{tls_export.port}") as url:
        response = httpx.get(
            f"{url}/api/v1/saes/s/export/neuronpedia/status/no-such-job",
            headers={"Authorization": f"Bearer {token_of('alice')}"},
        )
    assert response.status_code == 503
