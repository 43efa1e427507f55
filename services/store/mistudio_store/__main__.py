"""`python -m mistudio_store` / `mistudio-store`: run the store until SIGTERM or Ctrl-C."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from mistudio_common.logging_setup import configure_logging
from mistudio_common.server import serve_until_signal

from mistudio_store.config import StoreSettings
from mistudio_store.server import build_store_server


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mistudio-store",
        description="The miStudio store service. Settings come from MISTUDIO_STORE_* variables; "
        "these flags override them.",
    )
    parser.add_argument("--host", help="interface to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="gRPC port (default 50051; 0 picks one)")
    parser.add_argument("--database-url", help="SQLAlchemy URL (default SQLite under data_dir)")
    parser.add_argument("--log-level", help="DEBUG, INFO, WARNING or ERROR")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    settings = StoreSettings(**overrides)
    configure_logging("store", settings.log_level)
    running = build_store_server(settings)
    serve_until_signal(running)


if __name__ == "__main__":
    main()
