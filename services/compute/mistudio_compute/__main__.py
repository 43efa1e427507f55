"""``python -m mistudio_compute --host H --port N``: runs the compute service until SIGTERM.

On SIGTERM/SIGINT running computations stop at their next checkpoint and resume when the
service starts again with the same data directory.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from mistudio_common.logging_setup import configure_logging
from mistudio_common.server import serve_until_signal

from mistudio_compute.config import ComputeSettings
from mistudio_compute.server import build_compute_server

log = logging.getLogger("mistudio_compute")


def main(argv: Sequence[str] | None = None) -> None:
    defaults = ComputeSettings()
    parser = argparse.ArgumentParser(prog="mistudio-compute", description=__doc__)
    parser.add_argument("--host", default=defaults.host, help="interface to listen on")
    parser.add_argument("--port", type=int, default=defaults.port, help="gRPC port (0: any)")
    parser.add_argument("--store", default=defaults.store_address, help="store service address")
    parser.add_argument("--data-dir", default=str(defaults.data_dir), help="checkpoint folder")
    args = parser.parse_args(argv)
    settings = defaults.model_copy(
        update={
            "host": args.host,
            "port": args.port,
            "store_address": args.store,
            "data_dir": Path(args.data_dir),
        }
    )
    configure_logging("compute", settings.log_level)
    running = build_compute_server(settings)
    log.info("compute service ready", extra={"port": running.port, "store": args.store})
    serve_until_signal(running)


if __name__ == "__main__":
    main()
