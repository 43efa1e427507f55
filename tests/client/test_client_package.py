"""The client package: the stubs alone in a fresh virtual environment, calling a real service."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.export.service.stack import Stack, start_stack

CLIENT_SOURCE = Path(__file__).resolve().parents[2] / "protos" / "gen" / "python"
RUNTIME = ("grpcio==1.85.3", "protobuf==7.36.2", "googleapis-common-protos==1.76.0")
"""The versions the service runs with (pyproject.toml), from the pip cache or the registry."""
CALLER = """
import importlib.util, sys
import grpc
from mistudio.export.v1 import export_service_pb2 as epb, export_service_pb2_grpc as egrpc

assert importlib.util.find_spec("torch") is None, "torch is importable"
assert importlib.util.find_spec("mistudio_export") is None, "the service package is importable"
with grpc.insecure_channel(sys.argv[1]) as channel:
    exports = egrpc.ExportServiceStub(channel)
    print("jobs", len(exports.ListExports(epb.ListExportsRequest(page_size=10)).jobs))
    try:
        exports.GetExport(epb.GetExportRequest(job_id="no-such-job"))
    except grpc.RpcError as error:
        print("status", error.code().name)
"""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    running = start_stack(tmp_path_factory.mktemp("client") / "data")
    yield running
    running.stop()


def pip(venv: Path, *args: str) -> None:
    result = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr


def test_client_package_installs_without_torch_and_calls_the_service(
    tmp_path: Path, stack: Stack
) -> None:
    source = tmp_path / "client-source"  # a copy: an in-tree build would litter the checkout
    shutil.copytree(CLIENT_SOURCE, source, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip(venv, *RUNTIME, "wheel")  # wheel: to build the client with the venv's own setuptools
    pip(venv, "--no-deps", "--no-build-isolation", str(source))

    result = subprocess.run(
        [str(venv / "bin" / "python"), "-c", CALLER, stack.export.address],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["jobs", "0", "status", "NOT_FOUND"]
