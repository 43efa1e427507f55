"""Gateway settings, read from MISTUDIO_GATEWAY_* environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MISTUDIO_GATEWAY_", frozen=True)

    host: str = "127.0.0.1"
    """Interface to listen on; 0.0.0.0 inside a container."""
    port: int = 8080
    """HTTP port; 0 picks a free one."""
    export_address: str = "127.0.0.1:50053"
    """Where the export service listens; every request is answered through it."""
    tls_ca_file: Path | None = None
    """PEM CA that signed the export service's certificate; turns TLS on. The gateway presents
    no client certificate: it must never become an identity that callers act as."""
    log_level: str = "INFO"
