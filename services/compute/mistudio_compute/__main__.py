"""``python -m mistudio_compute --host H --port N``: runs the compute service until SIGTERM.

On SIGTERM/SIGINT running computations stop at their next checkpoint and resume when the
service starts again with the same data directory.
"""

from __future__ import annotations

from collections.abc import Sequence

from mistudio_common.service_cli import Flag, parse_settings, run_service

from mistudio_compute.config import ComputeSettings
from mistudio_compute.server import build_compute_server

FLAGS = (
    Flag("--store", "store_address", "store service address"),
    Flag("--data-dir", "data_dir", "checkpoint folder root"),
    Flag("--device", "device", "auto, cpu, cuda or cuda:N"),
)


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse_settings(
        ComputeSettings, prog="mistudio-compute", description=__doc__, flags=FLAGS, argv=argv
    )
    run_service("compute", settings, build_compute_server, store=settings.store_address)


if __name__ == "__main__":
    main()
