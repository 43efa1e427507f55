"""Two stacks. ``secure_stack``: a store (on PostgreSQL), compute and export service that all
demand credentials; identities: the three services, the users alice and mallory, and the admin
root; Alice owns one SAE and one finished export, made through the real services with her own
token. ``stack``: a stack whose compute input root is ``root/`` (and the stories260K model),
a tiny registered SAE inside it, and an ``outside/`` folder next to it (the input suites).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.compute.v1 import compute_service_pb2_grpc as cgrpc
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.export.v1 import export_service_pb2_grpc as egrpc
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio.store.v1 import store_service_pb2_grpc as sgrpc
from mistudio_common.auth import PeerCredentials
from mistudio_common.server import RunningServer, open_channel
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from tests.export.service.stack import (
    D_IN,
    D_SAE,
    HOOK,
    STORIES_DIR,
    STORIES_REF,
    Stack,
    export_config,
    register_sae,
    run_to_end,
    start_stack,
    token_source,
    write_sae_folder,
    write_tokens,
)

PG_ADMIN_URL = os.environ.get(
    "MISTUDIO_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
TOKENS = {
    "store": ("service", "tok-store-7f3a"),
    "compute": ("service", "tok-compute-91c2"),
    "export": ("service", "tok-export-5d0e"),
    "alice": ("user", "tok-alice-2b8f"),
    "mallory": ("user", "tok-mallory-c4e1"),
    "root": ("admin", "tok-root-e9d7"),
}


def token_of(name: str) -> str:
    return TOKENS[name][1]


def write_token_file(path: Path) -> Path:
    lines = ["# name role token", *(f"{n} {role} {tok}" for n, (role, tok) in TOKENS.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for the suite, dropped at the end."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect():
            pass
    except OperationalError as error:
        admin.dispose()
        reason = f"PostgreSQL is unreachable at {PG_ADMIN_URL}: {error.orig}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    name = f"mistudio_security_{uuid.uuid4().hex[:12]}"
    with admin.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
    admin.dispose()


@dataclass
class SecureStack:
    """The three servers with token authentication, and stubs that act as any identity."""

    data_dir: Path
    database_url: str
    store: RunningServer
    compute: RunningServer
    export: RunningServer
    channels: list[grpc.Channel] = field(default_factory=list)

    def _channel(self, address: str, name: str | None) -> grpc.Channel:
        peer = PeerCredentials(token=token_of(name) if name else "")
        self.channels.append(open_channel(address, peer))
        return self.channels[-1]

    def exports(self, name: str | None) -> egrpc.ExportServiceStub:
        return egrpc.ExportServiceStub(self._channel(self.export.address, name))

    def records(self, name: str | None) -> sgrpc.StoreServiceStub:
        return sgrpc.StoreServiceStub(self._channel(self.store.address, name))

    def computation(self, name: str | None) -> cgrpc.ComputeServiceStub:
        return cgrpc.ComputeServiceStub(self._channel(self.compute.address, name))

    def database(self) -> Engine:
        return create_engine(self.database_url, poolclass=NullPool)

    def stop(self) -> None:
        for channel in self.channels:
            channel.close()
        for server in (self.export, self.compute, self.store):
            server.stop(grace_seconds=1.0)


@pytest.fixture(scope="session")
def secure_stack(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureStack]:
    from mistudio_compute.config import ComputeSettings
    from mistudio_compute.server import build_compute_server
    from mistudio_export.config import ExportSettings
    from mistudio_export.server import build_export_server
    from mistudio_store.config import StoreSettings
    from mistudio_store.server import build_store_server

    workdir = tmp_path_factory.mktemp("secure")
    token_file = write_token_file(workdir / "tokens.txt")
    data_dir = workdir / "data"
    store = build_store_server(
        StoreSettings(data_dir=data_dir, database_url=pg_url, port=0, auth_token_file=token_file)
    )
    compute = build_compute_server(
        ComputeSettings(
            port=0,
            store_address=store.address,
            data_dir=data_dir,
            input_roots=(tmp_path_factory.getbasetemp(), STORIES_DIR),
            device="cpu",
            auth_token_file=token_file,
            service_token=token_of("compute"),
        )
    )
    export = build_export_server(
        ExportSettings(
            port=0,
            store_address=store.address,
            compute_address=compute.address,
            data_dir=data_dir,
            features_per_batch=8,
            auth_token_file=token_file,
            service_token=token_of("export"),
        )
    )
    stack = SecureStack(data_dir, pg_url, store, compute, export)
    yield stack
    stack.stop()


@dataclass(frozen=True)
class AliceExport:
    sae_id: str
    job_id: str


def sae_message(sae_id: str, weights_uri: str, **fields: str) -> spb.Sae:
    return spb.Sae(
        sae_id=sae_id,
        model_id=STORIES_REF,
        hook_point=HOOK,
        d_in=D_IN,
        d_sae=D_SAE,
        architecture=spb.ARCHITECTURE_STANDARD,
        weights_uri=weights_uri,
        neuronpedia_model_id="stories260k",
        neuronpedia_source_set="mistudio-res-32",
        **fields,
    )


@pytest.fixture(scope="session")
def alice_export(
    secure_stack: SecureStack, tmp_path_factory: pytest.TempPathFactory
) -> AliceExport:
    """Alice registers an SAE with her token and exports it; the export succeeds."""
    workdir = tmp_path_factory.mktemp("alice")
    folder = write_sae_folder(workdir / "sae")
    tokens = token_source(write_tokens(workdir / "tokens.npy", rows=8))
    sae = sae_message("alice-sae", str(folder))
    secure_stack.records("alice").CreateSae(spb.CreateSaeRequest(sae=sae))
    request = epb.StartExportRequest(
        sae_id=sae.sae_id,
        request_id="alice-1",
        config=export_config(tokens, device="cpu", batch_size=4),
    )
    last = run_to_end(secure_stack.exports("alice").StartExport(request))[-1]
    assert last.HasField("result"), last.progress.error
    return AliceExport(sae.sae_id, last.progress.job_id)


MEMORY_BUDGET = 512 << 20
"""The compute service's budget here: the largest parameters over all 32 features exceed it,
so they run in feature shards."""


@pytest.fixture(scope="package")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("security")


@pytest.fixture(scope="package")
def root(workdir: Path) -> Path:
    """The compute service's input root (with the stories260K model)."""
    return workdir / "root"


@pytest.fixture(scope="package")
def outside(workdir: Path) -> Path:
    folder = workdir / "outside"
    folder.mkdir()
    return folder


@pytest.fixture(scope="package")
def stack(root: Path) -> Iterator[Stack]:
    running = start_stack(
        root / "data", memory_budget_bytes=MEMORY_BUDGET, input_roots=(root, STORIES_DIR)
    )
    yield running
    running.stop()


@pytest.fixture(scope="package")
def sae_id(stack: Stack, root: Path) -> str:
    return register_sae(stack, "tiny-sae", str(write_sae_folder(root / "sae"))).sae_id


@pytest.fixture(scope="package")
def tokens(root: Path) -> tpb.TokenSource:
    return token_source(write_tokens(root / "tokens.npy", rows=32))
