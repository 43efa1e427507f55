"""The gateway passes each caller's identity to the export service and never stands in for it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.gateway.server import running_gateway
from tests.security.conftest import AliceExport, SecureStack, token_of

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def gateway(secure_stack: SecureStack) -> Iterator[str]:
    with running_gateway(secure_stack.export.address) as url:
        yield url


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token_of(name)}"}


def status_url(gateway: str, export: AliceExport) -> str:
    return f"{gateway}/api/v1/saes/{export.sae_id}/export/neuronpedia/status/{export.job_id}"


def test_the_owner_sees_her_export_through_the_gateway(
    gateway: str, alice_export: AliceExport
) -> None:
    response = httpx.get(status_url(gateway, alice_export), headers=bearer("alice"))
    assert response.status_code == 200, response.text
    assert response.json()["job"]["owner"] == "alice"


def test_another_user_gets_not_found_as_over_grpc(gateway: str, alice_export: AliceExport) -> None:
    response = httpx.get(status_url(gateway, alice_export), headers=bearer("mallory"))
    assert response.status_code == 404
    assert response.json()["grpc_status"] == "NOT_FOUND"


def test_a_request_without_credentials_is_refused_by_the_service(
    gateway: str, alice_export: AliceExport
) -> None:
    response = httpx.get(status_url(gateway, alice_export))
    assert response.status_code == 401
    assert response.json()["grpc_status"] == "UNAUTHENTICATED"
    assert response.json()["field"] == "authorization"


def test_an_unknown_token_is_401_and_the_event_stream_stays_closed(
    gateway: str, alice_export: AliceExport
) -> None:
    url = status_url(gateway, alice_export).replace("/status/", "/events/")
    response = httpx.get(url, headers={"Authorization": "Bearer not-a-token"})
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
