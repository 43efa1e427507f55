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
