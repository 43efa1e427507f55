"""`python -m mistudio_store` / `mistudio-store`: run the store until SIGTERM or Ctrl-C."""

from __future__ import annotations

from collections.abc import Sequence

from mistudio_common.service_cli import Flag, parse_settings, run_service

from mistudio_store.config import StoreSettings
from mistudio_store.server import build_store_server

FLAGS = (
    Flag("--database-url", "database_url", "SQLAlchemy URL, e.g. postgresql+psycopg://u@h/db"),
    Flag("--data-dir", "data_dir", "folder of the embedded SQLite database"),
)


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse_settings(
        StoreSettings, prog="mistudio-store", description=__doc__, flags=FLAGS, argv=argv
    )
    run_service("store", settings, build_store_server)


if __name__ == "__main__":
    main()
