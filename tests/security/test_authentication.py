"""Every service wants credentials once configured; without any it serves loopback only."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio.store.v1 import store_service_pb2_grpc as sgrpc
from mistudio_common.auth import PeerCredentials
from mistudio_common.errors import InvalidArgument
from mistudio_common.server import RunningServer, open_channel
from mistudio_store.config import StoreSettings
from mistudio_store.server import build_store_server

from scripts.make_deploy_secrets import Authority
from tests.security.conftest import SecureStack, token_of, write_token_file


def test_every_service_refuses_a_caller_without_credentials(secure_stack: SecureStack) -> None:
    calls = [
        lambda: secure_stack.records(None).ListSaes(spb.ListSaesRequest()),
        lambda: secure_stack.computation(None).GetComputation(
            cpb.GetComputationRequest(job_id="x")
        ),
        lambda: secure_stack.exports(None).ListExports(epb.ListExportsRequest()),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "token" in str(caught.value.details())


def test_an_unknown_token_is_unauthenticated(secure_stack: SecureStack) -> None:
    peer = PeerCredentials(token="tok-guessed")
    with (
        open_channel(secure_stack.store.address, peer) as channel,
        pytest.raises(grpc.RpcError) as caught,
    ):
        sgrpc.StoreServiceStub(channel).ListSaes(spb.ListSaesRequest())
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "not known" in str(caught.value.details())


def test_health_answers_without_credentials(secure_stack: SecureStack) -> None:
    for server in (secure_stack.store, secure_stack.compute, secure_stack.export):
        with open_channel(server.address, PeerCredentials()) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_a_user_token_is_accepted(secure_stack: SecureStack) -> None:
    reply = secure_stack.records("mallory").ListSaes(spb.ListSaesRequest())
    assert all(sae.owner == "mallory" for sae in reply.saes)


def test_without_credentials_a_non_loopback_bind_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument) as caught:
        build_store_server(StoreSettings(data_dir=tmp_path, host="0.0.0.0", port=0))
    assert caught.value.field == "host"
    assert "auth_token_file" in caught.value.fix


def test_a_service_started_on_a_public_interface_without_credentials_exits_naming_it(
    tmp_path: Path,
) -> None:
    env = {**os.environ, "MISTUDIO_STORE_DATA_DIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "mistudio_store", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "error [host: env MISTUDIO_STORE_HOST]: refusing to listen on '0.0.0.0'" in result.stderr


def test_without_credentials_loopback_serves_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="mistudio_common.auth"):
        server = build_store_server(StoreSettings(data_dir=tmp_path, port=0))
    try:
        assert "loopback only" in caplog.text
        with open_channel(server.address, PeerCredentials()) as channel:
            sgrpc.StoreServiceStub(channel).ListSaes(spb.ListSaesRequest())
    finally:
        server.stop(0)


def test_with_credentials_a_non_loopback_bind_is_allowed(tmp_path: Path) -> None:
    token_file = write_token_file(tmp_path / "tokens.txt")
    server = build_store_server(
        StoreSettings(data_dir=tmp_path, host="0.0.0.0", port=0, auth_token_file=token_file)
    )
    server.stop(0)


def test_inline_auth_tokens_setting_defines_identities(tmp_path: Path) -> None:
    server = build_store_server(
        StoreSettings(data_dir=tmp_path, port=0, auth_tokens="carol:admin:tok-c, dan:user:tok-d")
    )
    try:
        with open_channel(server.address, PeerCredentials(token="tok-c")) as channel:
            assert sgrpc.StoreServiceStub(channel).ListSaes(spb.ListSaesRequest()).saes == []
        with (
            open_channel(server.address, PeerCredentials()) as channel,
            pytest.raises(grpc.RpcError) as caught,
        ):
            sgrpc.StoreServiceStub(channel).ListSaes(spb.ListSaesRequest())
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        server.stop(0)


def test_a_malformed_token_file_names_the_line(tmp_path: Path) -> None:
    token_file = tmp_path / "tokens.txt"
    token_file.write_text("alice user tok-a\nbob superuser tok-b\n", encoding="utf-8")
    with pytest.raises(InvalidArgument) as caught:
        build_store_server(StoreSettings(data_dir=tmp_path, port=0, auth_token_file=token_file))
    assert "line 2" in caught.value.message and "superuser" in caught.value.message


def test_tls_that_authenticates_nobody_is_refused(tmp_path: Path) -> None:
    issued = Authority(tmp_path / "pki").issue("store")
    settings = StoreSettings(
        data_dir=tmp_path, port=0, tls_cert_file=issued.cert, tls_key_file=issued.key
    )
    with pytest.raises(InvalidArgument) as caught:
        build_store_server(settings)
    assert caught.value.field == "tls_ca_file"


# -- mutual TLS ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def mtls_store(ca: Authority, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A store that accepts only client certificates signed by ``ca`` (no tokens)."""
    folder = tmp_path_factory.mktemp("mtls-store")
    identities = folder / "identities.txt"
    identities.write_text("export service -\n", encoding="utf-8")
    server_cert = ca.issue("store")
    server = build_store_server(
        StoreSettings(
            data_dir=folder,
            port=0,
            host="0.0.0.0",
            tls_cert_file=server_cert.cert,
            tls_key_file=server_cert.key,
            tls_ca_file=ca.cert,
            auth_token_file=identities,
        )
    )
    yield server
    server.stop(0)


def client(ca: Authority, store: RunningServer, common_name: str | None) -> sgrpc.StoreServiceStub:
    issued = ca.issue(common_name) if common_name else None
    peer = PeerCredentials(
        ca=ca.cert.read_bytes(),
        cert=issued.cert.read_bytes() if issued else None,
        key=issued.key.read_bytes() if issued else None,
    )
    return sgrpc.StoreServiceStub(open_channel(f"localhost:{store.port}", peer))


def test_mtls_client_certificate_is_the_identity(ca: Authority, mtls_store: RunningServer) -> None:
    export = client(ca, mtls_store, "export")
    created = export.CreateSae(
        spb.CreateSaeRequest(
            sae=spb.Sae(sae_id="by-cert", model_id="m", hook_point="blocks.0.hook_resid_post",
                        d_in=4, d_sae=8, architecture=spb.ARCHITECTURE_STANDARD,
                        weights_uri="/w", owner="carol")
        )
    ).sae  # fmt: skip
    assert created.owner == "carol"  # a service identity may register for the user it serves
    dave = client(ca, mtls_store, "dave")
    assert dave.ListSaes(spb.ListSaesRequest()).saes == []  # dave: a user, sees only his own
    with pytest.raises(grpc.RpcError) as caught:
        dave.ListExportJobs(spb.ListExportJobsRequest())
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_mtls_refuses_a_client_without_a_certificate(
    ca: Authority, mtls_store: RunningServer
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        client(ca, mtls_store, None).ListSaes(spb.ListSaesRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_refuses_a_certificate_from_another_ca(
    ca: Authority, mtls_store: RunningServer, tmp_path: Path
) -> None:
    stranger = Authority(tmp_path / "other", name="someone else's CA").issue("export")
    peer = PeerCredentials(
        ca=ca.cert.read_bytes(), cert=stranger.cert.read_bytes(), key=stranger.key.read_bytes()
    )
    stub = sgrpc.StoreServiceStub(open_channel(f"localhost:{mtls_store.port}", peer))
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListSaes(spb.ListSaesRequest(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_tls_with_tokens_accepts_a_token_without_a_client_certificate(
    ca: Authority, tmp_path: Path
) -> None:
    server_cert = ca.issue("store-with-tokens")
    server = build_store_server(
        StoreSettings(
            data_dir=tmp_path,
            port=0,
            tls_cert_file=server_cert.cert,
            tls_key_file=server_cert.key,
            tls_ca_file=ca.cert,
            auth_token_file=write_token_file(tmp_path / "tokens.txt"),
        )
    )
    try:
        peer = PeerCredentials(token=token_of("alice"), ca=ca.cert.read_bytes())
        with open_channel(f"localhost:{server.port}", peer) as channel:
            assert sgrpc.StoreServiceStub(channel).ListSaes(spb.ListSaesRequest()).saes == []
        with pytest.raises(grpc.RpcError) as caught:  # plaintext to a TLS port
            sgrpc.StoreServiceStub(
                open_channel(server.address, PeerCredentials(token=token_of("alice")))
            ).ListSaes(spb.ListSaesRequest(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop(0)
