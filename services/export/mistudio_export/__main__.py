"""``python -m mistudio_export --host H --port N``: runs the export service until SIGTERM.

On SIGTERM/SIGINT running exports stop at their next checkpoint and stay RUNNING in the store;
the service resumes them when it starts again with the same store and data directory.
"""

from __future__ import annotations

from collections.abc import Sequence

from mistudio_common.service_cli import Flag, parse_settings, run_service

from mistudio_export.config import ExportSettings
from mistudio_export.server import build_export_server

FLAGS = (
    Flag("--store", "store_address", "store service address"),
    Flag("--compute", "compute_address", "compute service address"),
    Flag("--data-dir", "data_dir", "staging folder root"),
    Flag("--object-store-url", "object_store_url", "file:///path or s3://bucket?endpoint=…"),
)


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse_settings(
        ExportSettings,
        prog="mistudio-export-service",
        description=__doc__,
        flags=FLAGS,
        argv=argv,
    )
    run_service("export", settings, build_export_server, store=settings.store_address)


if __name__ == "__main__":
    main()
