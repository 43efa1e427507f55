"""The store as a running server: health, reflection, restarts, the command line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from mistudio.store.v1 import store_service_pb2 as pb
from mistudio.store.v1 import store_service_pb2_grpc
from mistudio_common.server import insecure_channel
from mistudio_store.server import SERVICE_NAME, build_store_server

from tests.store.conftest import settings_for
from tests.store.helpers import make_dashboard, make_sae, parsed, serialized


def test_health_reports_serving_for_the_store_service(channel: grpc.Channel) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE_NAME):
        response = health.Check(health_pb2.HealthCheckRequest(service=service))
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_store_service(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    response = next(iter(stub.ServerReflectionInfo(iter([request]))))
    names = {s.name for s in response.list_services_response.service}
    assert "mistudio.store.v1.StoreService" in names


def test_data_survives_a_server_restart(database_url: str) -> None:
    params = pb.GetDashboardsRequest().params
    first = build_store_server(settings_for(database_url))
    with insecure_channel(first.address) as channel:
        stub = store_service_pb2_grpc.StoreServiceStub(channel)
        stub.CreateSae(pb.CreateSaeRequest(sae=make_sae("kept")))
        stub.UpsertFeatures(
            pb.UpsertFeaturesRequest(
                sae_id="kept", features=[pb.Feature(feature_index=3, label="x")]
            )
        )
        put = pb.PutDashboardsRequest(
            sae_id="kept", params=params, serialized_dashboards=serialized(make_dashboard(3))
        )
        stub.PutDashboards(iter([put]))
        job = stub.CreateExportJob(
            pb.CreateExportJobRequest(job=pb.ExportJob(sae_id="kept", request_id="r1"))
        ).job
    first.stop(grace_seconds=0)

    second = build_store_server(settings_for(database_url))
    try:
        with insecure_channel(second.address) as channel:
            stub = store_service_pb2_grpc.StoreServiceStub(channel)
            assert stub.GetSae(pb.GetSaeRequest(sae_id="kept")).sae.d_sae == 64
            features = stub.ListFeatures(pb.ListFeaturesRequest(sae_id="kept")).features
            assert [(f.feature_index, f.label) for f in features] == [(3, "x")]
            got = list(
                stub.GetDashboards(pb.GetDashboardsRequest(sae_id="kept", feature_indices=[3]))
            )
            assert parsed(got) == [make_dashboard(3)]
            assert stub.GetExportJob(pb.GetExportJobRequest(job_id=job.job_id)).job == job
    finally:
        second.stop(grace_seconds=0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_command_line_serves_logs_json_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    env = {**os.environ, "MISTUDIO_DATA_DIR": str(tmp_path)}
    process = subprocess.Popen(
        [sys.executable, "-m", "mistudio_store", "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            stub = store_service_pb2_grpc.StoreServiceStub(channel)
            stub.CreateSae(pb.CreateSaeRequest(sae=make_sae("cli")))
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    logs = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert {entry["service"] for entry in logs} == {"store"}
    assert any(entry["msg"] == "stopping" for entry in logs)
    assert (tmp_path / "store.db").exists()
