"""All three services on loopback, on embedded defaults: the store in a child process.

This is what `mistudio-export serve`, the demo and a CLI call without `--export-address` run:
SQLite and a local archive folder under one data folder, CPU or the local GPU, ephemeral ports
unless fixed ones are asked for. The services still talk to each other over real gRPC. The store
runs in a child process (``mistudio_cli.service_process``): its request handling is Python work
that would otherwise wait on the same interpreter lock as compute's and the export's (issue #14);
compute and the export stay here, as a second process importing torch would cost ~300 MB.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mistudio_common.gc_pause import start_up_kept
from mistudio_common.server import RunningServer
from mistudio_common.settings_env import check_environment

from mistudio_cli.service_process import ServiceProcess, start_service_process

log = logging.getLogger(__name__)


@dataclass
class LocalStack:
    store: ServiceProcess
    compute: RunningServer
    export: RunningServer
    data_dir: Path

    @property
    def addresses(self) -> dict[str, str]:
        return {
            "store": self.store.address,
            "compute": self.compute.address,
            "export": self.export.address,
        }

    def stop(self) -> None:
        """Stops the export service first so its running jobs checkpoint before peers go."""
        for server in (self.export, self.compute, self.store):
            server.stop(grace_seconds=2.0)

    def __enter__(self) -> LocalStack:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def start_local_stack(
    data_dir: Path,
    *,
    store_port: int = 0,
    compute_port: int = 0,
    export_port: int = 0,
    device: str = "auto",
    database_url: str = "",
    input_paths: Sequence[Path] = (),
) -> LocalStack:
    """Starts store, compute and export on 127.0.0.1, wired to each other; compute reads
    inputs under ``data_dir`` and ``input_paths`` (the files a CLI user named) only."""
    from mistudio_store.config import StoreSettings

    check_environment(StoreSettings)
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    store_settings: dict[str, object] = {"data_dir": str(data_dir), "port": store_port}
    if database_url:
        store_settings["database_url"] = database_url
    store = start_service_process("store", store_settings, data_dir)
    try:
        with start_up_kept():  # imported while the store starts
            from mistudio_compute.config import ComputeSettings
            from mistudio_compute.server import build_compute_server
            from mistudio_export.config import ExportSettings
            from mistudio_export.server import build_export_server
        check_environment(ComputeSettings)
        check_environment(ExportSettings)
        store.wait_ready()
        compute = build_compute_server(
            ComputeSettings(
                port=compute_port,
                store_address=store.address,
                data_dir=data_dir,
                device=device,
                input_roots=(data_dir, *input_paths),
            )
        )
    except BaseException:
        store.stop(0)
        raise
    try:
        export = build_export_server(
            ExportSettings(
                port=export_port,
                store_address=store.address,
                compute_address=compute.address,
                data_dir=data_dir,
            )
        )
    except BaseException:
        compute.stop(0)
        store.stop(0)
        raise
    stack = LocalStack(store=store, compute=compute, export=export, data_dir=data_dir)
    log.info("local stack up", extra=stack.addresses)
    return stack
