"""The gateway over real HTTP against the real services: start, live progress, errors, download."""

from __future__ import annotations

import io
import socket
import zipfile
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.export.v1 import export_service_pb2 as epb

from tests.export.service.stack import Stack, token_source, write_tokens
from tests.gateway.server import running_gateway
from tests.gateway.sse import Event, follow, read_events, start_body

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def client(gateway: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway, timeout=120) as http:
        yield http


@pytest.fixture(scope="module")
def started(client: httpx.Client, sae_id: str, tokens: tpb.TokenSource) -> httpx.Response:
    return client.post(
        f"/api/v1/saes/{sae_id}/export/neuronpedia", json=start_body(tokens, "gateway-1")
    )


@pytest.fixture(scope="module")
def events(client: httpx.Client, started: httpx.Response) -> list[Event]:
    return follow(client, started.json()["links"]["events"])


@pytest.fixture(scope="module")
def job_id(started: httpx.Response, events: list[Event]) -> str:
    assert events[-1].data["progress"]["state"] == "JOB_STATE_SUCCEEDED", events[-1]
    return str(started.json()["job_id"])


def test_start_answers_202_with_the_job_and_where_to_follow_it(
    started: httpx.Response, sae_id: str
) -> None:
    assert started.status_code == 202, started.text
    body = started.json()
    assert body["job_id"]
    assert started.headers["location"] == body["links"]["status"]
    assert body["links"]["events"] == (
        f"/api/v1/saes/{sae_id}/export/neuronpedia/events/{body['job_id']}"
    )


def test_progress_stream_counts_up_and_ends_with_the_result(events: list[Event]) -> None:
    assert [event.name for event in events][-1] == "end"
    assert all(event.name == "progress" for event in events[:-1])
    ids = [event.id for event in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    result = events[-1].data["result"]
    assert result["feature_count"] == 32
    assert result["validation"]["valid"] is True


def test_status_shows_the_finished_job(client: httpx.Client, sae_id: str, job_id: str) -> None:
    response = client.get(f"/api/v1/saes/{sae_id}/export/neuronpedia/status/{job_id}")
    assert response.status_code == 200
    job = response.json()["job"]
    assert (job["job_id"], job["sae_id"]) == (job_id, sae_id)
    assert job["progress"]["state"] == "JOB_STATE_SUCCEEDED"


@pytest.mark.slow
def test_reattaching_with_last_event_id_sends_only_newer_messages(
    client: httpx.Client, sae_id: str, workdir: Any
) -> None:
    slow = token_source(write_tokens(workdir / "slow.npy", rows=256, seed=5))
    started = client.post(
        f"/api/v1/saes/{sae_id}/export/neuronpedia",
        json=start_body(slow, "gateway-reattach", n_top_examples=21),
    )
    assert started.status_code == 202, started.text
    url = started.json()["links"]["events"]
    seen: list[Event] = []
    with client.stream("GET", url) as response:
        for event in read_events(response):
            seen.append(event)
            if len(seen) == 2:
                break  # the connection drops mid-export
    assert seen[-1].name == "progress", "the export ended before the test could drop off"
    last_id = seen[-1].id
    resumed = follow(client, url, headers={"Last-Event-ID": str(last_id)})
    assert resumed and all(event.id is not None and event.id > last_id for event in resumed)
    assert resumed[-1].name == "end"
    assert resumed[-1].data["progress"]["state"] == "JOB_STATE_SUCCEEDED"


def test_download_streams_the_archive(client: httpx.Client, sae_id: str, job_id: str) -> None:
    response = client.get(f"/api/v1/saes/{sae_id}/export/neuronpedia/download/{job_id}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    assert int(response.headers["content-length"]) == len(response.content)
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert archive.testzip() is None
        assert any(name.endswith("manifest.json") for name in archive.namelist())


def test_validate_archive_reports_a_valid_export(
    client: httpx.Client, sae_id: str, job_id: str
) -> None:
    response = client.post(f"/api/v1/saes/{sae_id}/export/neuronpedia/validate/{job_id}")
    assert response.status_code == 200, response.text
    assert response.json()["summary"]["valid"] is True


def test_validate_config_estimates_without_starting_a_job(
    client: httpx.Client, stack: Stack, sae_id: str, tokens: tpb.TokenSource
) -> None:
    config = start_body(tokens, "")["config"]
    response = client.post(f"/api/v1/saes/{sae_id}/export/validate", json=config)
    assert response.status_code == 200, response.text
    assert response.json()["estimate"]["feature_count"] == 32


def test_feature_dashboard_comes_from_the_cache_after_an_export(
    client: httpx.Client, sae_id: str, job_id: str
) -> None:
    response = client.get(f"/api/v1/saes/{sae_id}/features/3/dashboard")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["from_cache"] is True
    assert int(body["dashboard"]["feature_index"]) == 3


def test_unknown_job_is_404_problem_json(client: httpx.Client, sae_id: str) -> None:
    response = client.get(f"/api/v1/saes/{sae_id}/export/neuronpedia/status/no-such-job")
    assert response.status_code == 404
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["status"] == 404 and problem["grpc_status"] == "NOT_FOUND"
    assert "no-such-job" in problem["detail"]


def test_job_of_another_sae_is_not_found_under_this_one(client: httpx.Client, job_id: str) -> None:
    response = client.get(f"/api/v1/saes/other-sae/export/neuronpedia/status/{job_id}")
    assert response.status_code == 404
    assert response.json()["field"] == "job_id"


def test_out_of_range_option_is_400_naming_the_field(
    client: httpx.Client, sae_id: str, tokens: tpb.TokenSource
) -> None:
    body = start_body(tokens, "gateway-bad", n_top_examples=5)
    response = client.post(f"/api/v1/saes/{sae_id}/export/neuronpedia", json=body)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == PROBLEM
    problem = response.json()
    assert problem["grpc_status"] == "INVALID_ARGUMENT"
    assert "n_top_examples" in problem["field"] and problem["fix"]


def test_unknown_body_field_is_400_naming_the_body(client: httpx.Client, sae_id: str) -> None:
    response = client.post(
        f"/api/v1/saes/{sae_id}/export/neuronpedia", json={"config": {"no_such_option": 1}}
    )
    assert response.status_code == 400
    assert response.json()["field"] == "body"
    assert "no_such_option" in response.json()["detail"]


def test_downloading_an_unfinished_export_is_a_failed_precondition(
    client: httpx.Client, stack: Stack, sae_id: str, tokens: tpb.TokenSource
) -> None:
    started = client.post(
        f"/api/v1/saes/{sae_id}/export/neuronpedia",
        json=start_body(tokens, "gateway-cancelled", n_top_examples=22),
    )
    job = started.json()["job_id"]
    stack.exports.CancelExport(epb.CancelExportRequest(job_id=job))
    response = client.get(f"/api/v1/saes/{sae_id}/export/neuronpedia/download/{job}")
    assert response.status_code == 400
    problem = response.json()
    assert problem["grpc_status"] == "FAILED_PRECONDITION"
    assert problem["violations"][0]["subject"] == "job_id"


def test_openapi_document_lists_the_prd_endpoints(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/api/v1/saes/{sae_id}/export/neuronpedia",
        "/api/v1/saes/{sae_id}/export/neuronpedia/status/{job_id}",
        "/api/v1/saes/{sae_id}/export/neuronpedia/download/{job_id}",
        "/api/v1/saes/{sae_id}/export/validate",
        "/api/v1/saes/{sae_id}/features/{feature_index}/dashboard",
        "/api/v1/saes/{sae_id}/export/neuronpedia/events/{job_id}",
    ):
        assert path in paths


def test_a_gateway_beyond_loopback_refuses_requests_without_an_identity(
    stack: Stack, sae_id: str
) -> None:
    status = f"/api/v1/saes/{sae_id}/export/neuronpedia/status/no-such-job"
    with running_gateway(stack.export.address, require_credentials=True) as url:
        anonymous = httpx.get(url + status)
        identified = httpx.get(url + status, headers={"Authorization": "Bearer some-token"})
    assert anonymous.status_code == 401
    assert anonymous.headers["www-authenticate"] == "Bearer"
    assert anonymous.json()["grpc_status"] == "UNAUTHENTICATED"
    assert identified.status_code == 404  # passed on: the service answered


def test_an_unreachable_export_service_is_503() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{closed.getsockname()[1]}"  # bound, never listening
        with running_gateway(address) as url:
            response = httpx.get(f"{url}/api/v1/saes/s/export/neuronpedia/status/j")
    assert response.status_code == 503
    assert response.json()["grpc_status"] == "UNAVAILABLE"


def test_a_quiet_progress_stream_sends_keepalive_comments(
    stack: Stack, sae_id: str, tokens: tpb.TokenSource
) -> None:
    with (
        running_gateway(stack.export.address, keepalive_seconds=0.01) as url,
        httpx.Client(base_url=url, timeout=120) as client,
    ):
        started = client.post(
            f"/api/v1/saes/{sae_id}/export/neuronpedia",
            json=start_body(tokens, "gateway-keepalive", n_top_examples=23),
        )
        with client.stream("GET", started.json()["links"]["events"]) as response:
            lines = list(response.iter_lines())
    assert ": keepalive" in lines
    assert [line for line in lines if line.startswith("event:")][-1] == "event: end"
