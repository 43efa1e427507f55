"""``mistudio-gateway --port N --export HOST:PORT``: serves the REST/SSE gateway until stopped.

Listening beyond loopback, it refuses requests without an Authorization header to pass on.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn
from mistudio_common.errors import InvalidArgument
from mistudio_common.logging_setup import configure_logging
from mistudio_common.service_cli import Flag, parse_settings

from mistudio_gateway.app import create_app
from mistudio_gateway.config import GatewaySettings

FLAGS = (
    Flag("--export", "export_address", "export service address"),
    Flag("--tls-ca", "tls_ca_file", "CA of the export service's certificate; turns TLS on", Path),
)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def read_ca(path: Path | None) -> bytes | None:
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as error:
        raise InvalidArgument(
            f"cannot read tls_ca_file {str(path)!r}: {error.strerror}",
            field="tls_ca_file",
            fix="point MISTUDIO_GATEWAY_TLS_CA_FILE (--tls-ca) at the CA's PEM file",
        ) from None


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse_settings(
        GatewaySettings,
        prog="mistudio-gateway",
        description=__doc__,
        flags=FLAGS,
        argv=argv,
    )
    configure_logging("gateway", settings.log_level)
    try:
        tls_ca = read_ca(settings.tls_ca_file)
    except InvalidArgument as error:  # a bad setting: one line naming it, not a traceback
        print(f"error [{error.field}]: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    app = create_app(
        settings.export_address,
        require_credentials=not is_loopback(settings.host),
        tls_ca=tls_ca,
    )
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
    )


if __name__ == "__main__":
    main()
