"""``python -m mistudio_export --host H --port N``: runs the export service until SIGTERM.

On SIGTERM/SIGINT running exports stop at their next checkpoint and stay RUNNING in the store;
the service resumes them when it starts again with the same store and data directory.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from mistudio_common.logging_setup import configure_logging
from mistudio_common.server import serve_until_signal

from mistudio_export.config import ExportSettings
from mistudio_export.server import build_export_server

log = logging.getLogger("mistudio_export")


def main(argv: Sequence[str] | None = None) -> None:
    defaults = ExportSettings()
    parser = argparse.ArgumentParser(prog="mistudio-export-service", description=__doc__)
    parser.add_argument("--host", default=defaults.host, help="interface to listen on")
    parser.add_argument("--port", type=int, default=defaults.port, help="gRPC port (0: any)")
    parser.add_argument("--store", default=defaults.store_address, help="store service address")
    parser.add_argument(
        "--compute", default=defaults.compute_address, help="compute service address"
    )
    parser.add_argument("--data-dir", default=str(defaults.data_dir), help="staging folder root")
    args = parser.parse_args(argv)
    settings = defaults.model_copy(
        update={
            "host": args.host,
            "port": args.port,
            "store_address": args.store,
            "compute_address": args.compute,
            "data_dir": Path(args.data_dir),
        }
    )
    configure_logging("export", settings.log_level)
    running = build_export_server(settings)
    log.info("export service ready", extra={"port": running.port, "store": args.store})
    serve_until_signal(running)


if __name__ == "__main__":
    main()
