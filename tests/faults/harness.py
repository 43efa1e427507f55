"""The services as separate processes on a private PostgreSQL cluster and a moto S3 server,
each of which a test can kill -9 (or stop) and start again on the same port."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import psycopg
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.export.v1 import export_service_pb2_grpc as egrpc
from mistudio.store.v1 import store_service_pb2_grpc as sgrpc
from mistudio_common.progress import TERMINAL_STATES

PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), Path("/usr/bin"))
REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


START_SECONDS = 180.0
"""How long a (re)started service may take to listen: compute imports torch and transformer_lens
(5 s on an idle machine; on a loaded 2-core machine a restarted compute listened after 60.2 s,
past the former 60 s limit, and finished its resumed computation 3 s later)."""


def wait_for_port(port: int, seconds: float = START_SECONDS) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@dataclass
class Service:
    """One process on a fixed loopback port; ``kill`` is kill -9, ``start`` brings it back."""

    name: str
    argv: list[str]
    env: dict[str, str]
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(self.argv, env=self.env, stdout=out, stderr=out)
        wait_for_port(self.port)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class PrivatePostgres:
    """A throwaway cluster in its own temporary folder (never the shared one), owned by
    postgres; the folder sits directly in /tmp so that user can reach it."""

    folder: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mistudio-pg-")))
    port: int = field(default_factory=free_port)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _as_postgres(self, *argv: str) -> None:
        command = [str(PG_BIN / argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True)

    def create(self) -> None:
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self._as_postgres(
            "initdb", "-D", str(self.folder / "data"), "-A", "trust", "-U", "postgres"
        )
        self.start()

    def start(self) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(
            "pg_ctl", "-D", str(self.folder / "data"), "-o", options,
            "-l", str(self.folder / "log"), "-w", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._as_postgres("pg_ctl", "-D", str(self.folder / "data"), "-m", mode, "-w", "stop")

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)

    def execute(self, sql: str) -> None:
        url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute(sql)  # type: ignore[arg-type]


@dataclass
class FaultStack:
    postgres: PrivatePostgres
    s3: Service
    store: Service
    compute: Service
    export: Service

    @property
    def services(self) -> dict[str, Service]:
        return {s.name: s for s in (self.s3, self.store, self.compute, self.export)}

    def exports(self) -> egrpc.ExportServiceStub:
        return egrpc.ExportServiceStub(grpc.insecure_channel(f"127.0.0.1:{self.export.port}"))

    def records(self) -> sgrpc.StoreServiceStub:
        return sgrpc.StoreServiceStub(grpc.insecure_channel(f"127.0.0.1:{self.store.port}"))

    def stop(self) -> None:
        for service in reversed(list(self.services.values())):
            service.stop()
        self.postgres.remove()

    def forget_cached_dashboards(self) -> None:
        """The next export computes its dashboards again (as the first one did)."""
        self.postgres.execute("DELETE FROM dashboards")

    def finished(
        self, job_id: str, seconds: float = 240.0, via: int | None = None
    ) -> epb.ExportJobView:
        """Polls GetExport (through any restart of the export service, or on the export
        service listening on port ``via``) until the job ends."""
        deadline = time.monotonic() + seconds
        exports = self.exports() if via is None else exports_at(via)
        while time.monotonic() < deadline:
            try:
                view = exports.GetExport(epb.GetExportRequest(job_id=job_id), timeout=10)
            except grpc.RpcError:
                time.sleep(0.5)
                continue
            if view.job.progress.state in TERMINAL_STATES:
                return view.job
            time.sleep(0.5)
        raise AssertionError(f"export {job_id} did not finish in {seconds} s")


def exports_at(port: int) -> egrpc.ExportServiceStub:
    return egrpc.ExportServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))


def replace_compute(stack: FaultStack, data_dir: Path, settings: dict[str, str]) -> None:
    """Another compute instance in place of the current one (a replaced pod): the same port, its
    own empty ``data_dir`` and log, ``settings`` on top; the old one is stopped if still running."""
    old = stack.compute
    old.stop()
    env = {**old.env, "MISTUDIO_COMPUTE_DATA_DIR": str(data_dir), **settings}
    stack.compute = Service("compute", old.argv, env, old.port, data_dir.with_suffix(".log"))
    stack.compute.start()


LEASE_SECONDS = 3.0
"""Export instances' leases: a crashed instance's jobs are adopted this soon."""


def second_export(stack: FaultStack, folder: Path) -> Service:
    """Another export service on the same store and compute, with its own port and data
    directory (so its own instance id), started."""
    port = free_port()
    env = {
        **stack.export.env,
        "MISTUDIO_EXPORT_PORT": str(port),
        "MISTUDIO_EXPORT_DATA_DIR": str(folder / "export-2"),
    }
    service = Service("export-2", stack.export.argv, env, port, folder / "export-2.log")
    service.start()
    return service


def start_fault_stack(
    folder: Path, input_roots: list[Path], compute_settings: dict[str, str] | None = None
) -> FaultStack:
    """Every service started; compute may read request files under ``input_roots``, with
    ``compute_settings`` (MISTUDIO_COMPUTE_ variables) on top of the harness's own."""
    postgres = PrivatePostgres()
    postgres.create()
    python = sys.executable
    base = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ports = {name: free_port() for name in ("s3", "store", "compute", "export")}
    s3 = Service(
        "s3",
        [python, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(ports["s3"])],
        base,
        ports["s3"],
        folder / "s3.log",
    )
    store_env = {
        **base,
        "MISTUDIO_STORE_PORT": str(ports["store"]),
        "MISTUDIO_STORE_DATABASE_URL": postgres.url,
        "MISTUDIO_STORE_DATA_DIR": str(folder / "store"),
    }
    compute_env = {
        **base,
        "MISTUDIO_COMPUTE_PORT": str(ports["compute"]),
        "MISTUDIO_COMPUTE_STORE_ADDRESS": f"127.0.0.1:{ports['store']}",
        "MISTUDIO_COMPUTE_DATA_DIR": str(folder / "compute"),
        "MISTUDIO_COMPUTE_DEVICE": "cpu",
        "MISTUDIO_COMPUTE_CHECKPOINT_EVERY_SECONDS": "0",
        "MISTUDIO_COMPUTE_INPUT_ROOTS": json.dumps([str(p) for p in input_roots]),
        **(compute_settings or {}),
    }
    export_env = {
        **base,
        "MISTUDIO_EXPORT_PORT": str(ports["export"]),
        "MISTUDIO_EXPORT_STORE_ADDRESS": f"127.0.0.1:{ports['store']}",
        "MISTUDIO_EXPORT_COMPUTE_ADDRESS": f"127.0.0.1:{ports['compute']}",
        "MISTUDIO_EXPORT_DATA_DIR": str(folder / "export"),
        "MISTUDIO_EXPORT_OBJECT_STORE_URL": (
            f"s3://exports?endpoint=127.0.0.1:{ports['s3']}&secure=false&region=us-east-1"
        ),
        "MISTUDIO_EXPORT_S3_ACCESS_KEY": "test-access",
        "MISTUDIO_EXPORT_S3_SECRET_KEY": "test-secret",
        "MISTUDIO_EXPORT_FEATURES_PER_BATCH": "8",
        "MISTUDIO_EXPORT_PROGRESS_PERSIST_SECONDS": "0.2",
        "MISTUDIO_EXPORT_FAULT_PATIENCE_SECONDS": "120",
        "MISTUDIO_EXPORT_LEASE_SECONDS": str(LEASE_SECONDS),
    }
    stack = FaultStack(
        postgres,
        s3,
        Service("store", [python, "-m", "mistudio_store"], store_env, ports["store"],
                folder / "store.log"),
        Service("compute", [python, "-m", "mistudio_compute"], compute_env, ports["compute"],
                folder / "compute.log"),
        Service("export", [python, "-m", "mistudio_export"], export_env, ports["export"],
                folder / "export.log"),
    )  # fmt: skip
    for service in stack.services.values():
        service.start()
    return stack
