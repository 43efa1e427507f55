"""Serving a written viewer on loopback (for browsers or setups that restrict file://)."""

from __future__ import annotations

import functools
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Requests are not worth a line each on the terminal."""


def preview_server(root: Path, port: int = 0) -> ThreadingHTTPServer:
    """A server for ``root`` bound to loopback (port 0: a free one); call serve_forever()."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    return ThreadingHTTPServer((LOOPBACK, port), handler)
