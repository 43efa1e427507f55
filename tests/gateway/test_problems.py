"""The one table from gRPC status codes to HTTP codes, and the problem+json it produces."""

from __future__ import annotations

import grpc
from mistudio_gateway.problems import HTTP_STATUS, PROBLEM_MEDIA_TYPE, Problem


def test_every_grpc_status_code_has_an_http_code() -> None:
    assert set(HTTP_STATUS) == set(grpc.StatusCode)


def test_problem_body_keeps_field_fix_and_violations() -> None:
    problem = Problem(
        status=400,
        code="FAILED_PRECONDITION",
        detail="export j is running",
        field="job_id",
        fix="wait",
        violations=[{"subject": "job_id", "description": "wait for it"}],
    )
    response = problem.response()
    assert response.media_type == PROBLEM_MEDIA_TYPE
    assert problem.body() == {
        "type": "urn:mistudio:problem:failed-precondition",
        "title": "Failed precondition",
        "status": 400,
        "detail": "export j is running",
        "grpc_status": "FAILED_PRECONDITION",
        "field": "job_id",
        "fix": "wait",
        "violations": [{"subject": "job_id", "description": "wait for it"}],
    }
