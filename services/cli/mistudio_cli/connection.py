"""How the CLI reaches the services: given addresses, or an in-process stack on loopback.

Commands that only read or write records (``list``, ``status``, ``labels``) start no more than
the store on the local data folder: no model, no compute service, no job manager.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
from mistudio.compute.v1 import compute_service_pb2_grpc as cgrpc
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.export.v1 import export_service_pb2_grpc as egrpc
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio.store.v1 import store_service_pb2_grpc as sgrpc
from mistudio_common.auth import PeerCredentials
from mistudio_common.errors import InvalidArgument
from mistudio_common.server import insecure_channel, open_channel
from mistudio_common.settings_env import CLIENT_ADDRESS_VARIABLES
from mistudio_common.uploaded_inputs import is_object_uri
from mistudio_export import views

from mistudio_cli.local_stack import LocalStack, start_local_stack


@dataclass
class Services:
    export: egrpc.ExportServiceStub
    store: sgrpc.StoreServiceStub | None
    compute: cgrpc.ComputeServiceStub | None
    stack: LocalStack | None

    def require_store_and_compute(self) -> tuple[sgrpc.StoreServiceStub, cgrpc.ComputeServiceStub]:
        if self.store is None or self.compute is None:
            raise InvalidArgument(
                "registering a local SAE folder needs the store and compute services",
                field="--store-address",
                fix="pass --store-address and --compute-address (or MISTUDIO_STORE_ADDRESS and "
                "MISTUDIO_COMPUTE_ADDRESS), or run without --export-address to use a local stack",
            )
        return self.store, self.compute


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("services (default: start them in-process)")
    group.add_argument(
        "--export-address",
        default=os.environ.get(CLIENT_ADDRESS_VARIABLES["export"], ""),
        metavar="HOST:PORT",
        help="a running export service (env MISTUDIO_EXPORT_ADDRESS)",
    )
    group.add_argument(
        "--store-address",
        default=os.environ.get(CLIENT_ADDRESS_VARIABLES["store"], ""),
        metavar="HOST:PORT",
    )
    group.add_argument(
        "--compute-address",
        default=os.environ.get(CLIENT_ADDRESS_VARIABLES["compute"], ""),
        metavar="HOST:PORT",
    )
    group.add_argument(
        "--token",
        default=os.environ.get("MISTUDIO_TOKEN", ""),
        help="bearer token for remote services (default: env MISTUDIO_TOKEN, never shown; "
        "prefer the variable: arguments show in process lists)",
    )
    group.add_argument(
        "--tls-ca",
        default=os.environ.get("MISTUDIO_TLS_CA", ""),
        metavar="PEM",
        help="CA that signed the remote services' certificates; turns TLS on (env MISTUDIO_TLS_CA)",
    )
    group.add_argument(
        "--tls-cert",
        default=os.environ.get("MISTUDIO_TLS_CERT", ""),
        metavar="PEM",
        help="client certificate for mutual TLS (env MISTUDIO_TLS_CERT)",
    )
    group.add_argument(
        "--tls-key",
        default=os.environ.get("MISTUDIO_TLS_KEY", ""),
        metavar="PEM",
        help="private key of --tls-cert (env MISTUDIO_TLS_KEY)",
    )
    group.add_argument(
        "--data-dir",
        default=os.environ.get("MISTUDIO_DATA_DIR", "data"),
        help="data folder of the in-process stack: SQLite store, archives (default: ./data)",
    )


def local_input_paths(args: argparse.Namespace) -> list[Path]:
    """The files named on the command line, which an in-process compute service may read
    besides its data folder (a SAE file brings its folder, for the cfg.json beside it)."""
    from mistudio_compute.references import LLAMA2C_PREFIX, parse_llama2c_ref, provenance_path

    named = (getattr(args, "tokens", ""), *getattr(args, "text", ()))
    paths = [Path(p) for p in named if p and not is_object_uri(p)]
    paths += [provenance_path(path) for path in paths[:1]]
    sae = Path(getattr(args, "sae", "") or "")
    if str(sae) != "." and sae.exists():
        paths.append(sae if sae.is_dir() else sae.parent)
    model = getattr(args, "model", "")
    if model.startswith(LLAMA2C_PREFIX):
        paths.extend(parse_llama2c_ref(model))
    return paths


def _read_pem(path: str, option: str) -> bytes | None:
    if not path:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise InvalidArgument(
            f"cannot read {option} {path!r}: {error.strerror}",
            field=option,
            fix=f"point {option} at a readable PEM file",
        ) from None


def remote_credentials(args: argparse.Namespace) -> PeerCredentials:
    """The CLI user's token and TLS files for remote services."""
    cert, key = _read_pem(args.tls_cert, "--tls-cert"), _read_pem(args.tls_key, "--tls-key")
    if (cert is None) != (key is None):
        raise InvalidArgument(
            "--tls-cert and --tls-key go together",
            field="--tls-key" if key is None else "--tls-cert",
            fix="pass both the client certificate and its key, or neither",
        )
    return PeerCredentials(
        token=args.token, ca=_read_pem(args.tls_ca, "--tls-ca"), cert=cert, key=key
    )


@dataclass
class JobTable:
    """Export jobs (views, and summaries for lists), from the export service or a store."""

    export: egrpc.ExportServiceStub | None
    store: sgrpc.StoreServiceStub | None

    def get(self, job_id: str) -> epb.ExportJobView:
        if self.export is not None:
            return self.export.GetExport(epb.GetExportRequest(job_id=job_id)).job
        assert self.store is not None
        stored = self.store.GetExportJob(spb.GetExportJobRequest(job_id=job_id)).job
        return views.view_of(stored)

    def pages(self, sae_id: str, owner: str) -> Iterator[list[epb.ExportJobSummary]]:
        token = ""
        while True:
            if self.export is not None:
                page = self.export.ListExports(
                    epb.ListExportsRequest(
                        page_size=100, page_token=token, sae_id=sae_id, owner=owner
                    )
                )
                yield list(page.jobs)
                token = page.next_page_token
            else:
                assert self.store is not None
                stored = self.store.ListExportJobs(
                    spb.ListExportJobsRequest(
                        page_size=100, page_token=token, sae_id=sae_id, owner=owner
                    )
                )
                yield [views.summary_of(job) for job in stored.jobs]
                token = stored.next_page_token
            if not token:
                return


@contextmanager
def store_only(args: argparse.Namespace) -> Iterator[sgrpc.StoreServiceStub]:
    """The store at --store-address, or one started alone on the local data folder. Alone, it
    runs in this process, not as the local stack's child (``service_process``): the child is
    there so the store's request handling does not wait on the interpreter lock that compute's
    pass and the export's writers hold, and a store-only command runs nothing beside it, so a
    child would only add its start-up (a second interpreter importing gRPC and SQLAlchemy)."""
    if args.store_address:
        with open_channel(args.store_address, remote_credentials(args)) as channel:
            yield sgrpc.StoreServiceStub(channel)
        return
    if args.export_address:
        raise InvalidArgument(
            "this command writes to the store, but only --export-address was given",
            field="--store-address",
            fix="pass --store-address (or MISTUDIO_STORE_ADDRESS) too",
        )
    from mistudio_store.config import StoreSettings
    from mistudio_store.server import build_store_server

    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    store = build_store_server(StoreSettings(data_dir=data_dir, port=0))
    try:
        with insecure_channel(store.address) as channel:
            yield sgrpc.StoreServiceStub(channel)
    finally:
        store.stop(grace_seconds=1.0)


@contextmanager
def job_table(args: argparse.Namespace) -> Iterator[JobTable]:
    """The export service when one is named (it knows live progress), else the local store."""
    if args.export_address:
        with open_channel(args.export_address, remote_credentials(args)) as channel:
            yield JobTable(export=egrpc.ExportServiceStub(channel), store=None)
        return
    with store_only(args) as store:
        yield JobTable(export=None, store=store)


@contextmanager
def connect(args: argparse.Namespace) -> Iterator[Services]:
    if args.export_address:
        channels: list[grpc.Channel] = []
        credentials = remote_credentials(args)

        def channel(address: str) -> grpc.Channel:
            channels.append(open_channel(address, credentials))
            return channels[-1]

        try:
            yield Services(
                export=egrpc.ExportServiceStub(channel(args.export_address)),
                store=sgrpc.StoreServiceStub(channel(args.store_address))
                if args.store_address
                else None,
                compute=cgrpc.ComputeServiceStub(channel(args.compute_address))
                if args.compute_address
                else None,
                stack=None,
            )
        finally:
            for opened in channels:
                opened.close()
        return
    device = getattr(args, "device", "auto")
    inputs = local_input_paths(args)
    with start_local_stack(Path(args.data_dir), device=device, input_paths=inputs) as stack:
        addresses = stack.addresses
        with (
            insecure_channel(addresses["export"]) as export_channel,
            insecure_channel(addresses["store"]) as store_channel,
            insecure_channel(addresses["compute"]) as compute_channel,
        ):
            yield Services(
                export=egrpc.ExportServiceStub(export_channel),
                store=sgrpc.StoreServiceStub(store_channel),
                compute=cgrpc.ComputeServiceStub(compute_channel),
                stack=stack,
            )
