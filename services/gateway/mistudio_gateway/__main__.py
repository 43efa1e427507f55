"""``mistudio-gateway --port N --export HOST:PORT``: serves the REST/SSE gateway until stopped.

Listening beyond loopback, it refuses requests without an Authorization header to pass on.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

import uvicorn
from mistudio_common.logging_setup import configure_logging
from mistudio_common.service_cli import Flag, parse_settings

from mistudio_gateway.app import create_app
from mistudio_gateway.config import GatewaySettings

FLAGS = (Flag("--export", "export_address", "export service address"),)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse_settings(
        GatewaySettings,
        prog="mistudio-gateway",
        description=__doc__,
        flags=FLAGS,
        argv=argv,
    )
    configure_logging("gateway", settings.log_level)
    uvicorn.run(
        create_app(settings.export_address, require_credentials=not is_loopback(settings.host)),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
    )


if __name__ == "__main__":
    main()
