"""deploy/ is checked by what can run here: its settings exist, its commands start the services."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mistudio_compute.config import ComputeSettings
from mistudio_export.config import ExportSettings
from mistudio_store.config import StoreSettings
from pydantic_settings import BaseSettings

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SETTINGS: dict[str, tuple[str, type[BaseSettings]]] = {
    "store": ("MISTUDIO_STORE_", StoreSettings),
    "compute": ("MISTUDIO_COMPUTE_", ComputeSettings),
    "export": ("MISTUDIO_EXPORT_", ExportSettings),
}
CONSOLE_SCRIPTS = {
    "mistudio-store": "mistudio_store",
    "mistudio-compute": "mistudio_compute",
    "mistudio-export-service": "mistudio_export",
}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_runs_postgres_minio_and_the_three_services(compose: dict) -> None:
    assert {"postgres", "minio", "store", "compute", "export"} <= set(compose["services"])
    assert compose["services"]["minio"]["image"].startswith("minio/minio")


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_every_service_variable_is_a_real_setting(compose: dict, service: str) -> None:
    prefix, settings = SETTINGS[service]
    fields = {name.upper() for name in settings.model_fields}
    for variable in compose["services"][service]["environment"]:
        if variable.startswith(prefix):
            assert variable.removeprefix(prefix) in fields, variable


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_every_service_command_is_an_entry_point_that_accepts_its_flags(
    compose: dict, service: str
) -> None:
    command = compose["services"][service]["command"]
    module = CONSOLE_SCRIPTS[command[0]]
    flags = [arg for arg in command[1:] if arg.startswith("--")]
    usage = subprocess.run(
        [sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120
    )
    assert usage.returncode == 0, usage.stderr
    for flag in flags:
        assert flag in usage.stdout, flag


def test_services_wait_for_healthy_dependencies(compose: dict) -> None:
    services = compose["services"]
    assert services["store"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert set(services["export"]["depends_on"]) == {"store", "compute", "minio"}
    for name in SETTINGS:
        assert "mistudio_common.healthcheck" in services[name]["healthcheck"]["test"]


def test_env_example_defines_every_required_variable(compose: dict) -> None:
    text = (DEPLOY / "docker-compose.yml").read_text()
    required = set(re.findall(r"\$\{(\w+):\?", text))
    example = {
        line.split("=", 1)[0]
        for line in (DEPLOY / ".env.example").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert required <= example


def _has_compose() -> bool:
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30)
    return probe.returncode == 0


@pytest.mark.skipif(not _has_compose(), reason="no docker compose plugin here")
def test_docker_compose_accepts_the_file() -> None:
    result = subprocess.run(
        ["docker", "compose", "--env-file", str(DEPLOY / ".env.example"),
         "-f", str(DEPLOY / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


# -- authentication and exposure ---------------------------------------------------------------

SECRET_MOUNT = "/run/secrets/"


def test_only_the_export_port_is_published_and_on_loopback_by_default(compose: dict) -> None:
    published = {name: s.get("ports", []) for name, s in compose["services"].items()}
    assert {name for name, ports in published.items() if ports} == {"export"}
    (mapping,) = published["export"]
    assert mapping.startswith("${EXPORT_BIND:-127.0.0.1}:")


def test_minio_api_and_console_are_not_published(compose: dict) -> None:
    assert "ports" not in compose["services"]["minio"]


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_every_service_speaks_tls_and_reads_tokens_from_secret_files(
    compose: dict, service: str
) -> None:
    prefix, _ = SETTINGS[service]
    spec = compose["services"][service]
    environment = spec["environment"]
    wanted = ["TLS_CERT_FILE", "TLS_KEY_FILE", "TLS_CA_FILE", "AUTH_TOKEN_FILE"]
    if service != "store":  # the store calls no peer
        wanted.append("SERVICE_TOKEN_FILE")
    for setting in wanted:
        path = environment[prefix + setting]
        assert path.startswith(SECRET_MOUNT), setting
        assert path.removeprefix(SECRET_MOUNT) in spec["secrets"], setting
    assert set(spec["secrets"]) <= set(compose["secrets"])
    assert "--tls-ca" in spec["healthcheck"]["test"]


def _secret_files(compose: dict, folder: Path) -> dict[str, Path]:
    """Where each compose secret's file lands when SECRETS_DIR is ``folder``."""
    prefix = "${SECRETS_DIR:-./secrets}/"
    return {
        name: folder / entry["file"].removeprefix(prefix)
        for name, entry in compose["secrets"].items()
    }


def _service_env(compose: dict, service: str, files: dict[str, Path]) -> dict[str, str]:
    environment = compose["services"][service]["environment"]
    return {
        key: str(files[value.removeprefix(SECRET_MOUNT)])
        for key, value in environment.items()
        if str(value).startswith(SECRET_MOUNT)
    }


def test_generated_secrets_let_services_and_users_talk_as_compose_wires_them(
    compose: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mistudio.store.v1 import store_service_pb2 as spb
    from mistudio.store.v1 import store_service_pb2_grpc as sgrpc
    from mistudio_common.auth import PeerCredentials, load_credentials
    from mistudio_common.errors import NotFound
    from mistudio_common.healthcheck import main as healthcheck
    from mistudio_common.server import open_channel
    from mistudio_compute.store_client import StoreClient
    from mistudio_store.server import build_store_server

    from scripts.make_deploy_secrets import make_secrets

    tokens = make_secrets(tmp_path / "secrets", users=["alice"], admins=[])
    files = _secret_files(compose, tmp_path / "secrets")
    assert all(path.is_file() for path in files.values())
    for service in SETTINGS:
        for key, value in _service_env(compose, service, files).items():
            monkeypatch.setenv(key, value)
    store = build_store_server(StoreSettings(data_dir=tmp_path, host="0.0.0.0", port=0))
    try:
        address = f"localhost:{store.port}"
        assert healthcheck([address, "--tls-ca", str(files["ca"])]) == 0
        compute_peer = load_credentials(ComputeSettings()).peer  # TLS + compute's service token
        with pytest.raises(NotFound):  # authenticated and authorized: the SAE just isn't there
            StoreClient(address, compute_peer).get_sae("missing-sae")
        alice = PeerCredentials(token=tokens["alice"], ca=files["ca"].read_bytes())
        with open_channel(address, alice) as channel:
            assert sgrpc.StoreServiceStub(channel).ListSaes(spb.ListSaesRequest()).saes == []
    finally:
        store.stop(0)


def test_the_image_compiles_the_fold_kernels_into_a_cache_its_user_owns() -> None:
    """numba reads a cache only from a folder it may write: the kernels are compiled at build,
    after the project is installed, into NUMBA_CACHE_DIR, which the service user then owns."""
    lines = [line.strip() for line in (DEPLOY / "Dockerfile").read_text().splitlines()]

    def first(text: str) -> int:
        return next(i for i, line in enumerate(lines) if text in line)

    installed = first('RUN pip install ".[ray]"')
    cache = first("ENV NUMBA_CACHE_DIR=")
    compiled = first('import mistudio_compute.dashboards.fold_kernels"')
    owned = first('chown -R mistudio "$NUMBA_CACHE_DIR"')
    assert installed < cache < compiled < owned < first("USER mistudio")
