"""Store service settings, read from MISTUDIO_STORE_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mistudio_common.auth import SecuritySettings
from pydantic import AliasChoices, Field
from pydantic_settings import SettingsConfigDict


def _sqlite_under_data_dir(data: dict[str, Any]) -> str:
    return f"sqlite:///{Path(data['data_dir']) / 'store.db'}"


class StoreSettings(SecuritySettings):
    """Also the credential settings of SecuritySettings (TLS files, tokens)."""

    model_config = SettingsConfigDict(env_prefix="MISTUDIO_STORE_", frozen=True)

    data_dir: Path = Field(
        default=Path("data"),
        validation_alias=AliasChoices("MISTUDIO_STORE_DATA_DIR", "MISTUDIO_DATA_DIR", "data_dir"),
    )
    """Folder of the embedded SQLite database (MISTUDIO_STORE_DATA_DIR or MISTUDIO_DATA_DIR)."""
    database_url: str = Field(default_factory=_sqlite_under_data_dir)
    """SQLAlchemy URL; default sqlite:///<data_dir>/store.db, or postgresql+psycopg://user@host/db."""
    host: str = "127.0.0.1"
    """Interface to listen on; anything but loopback needs credentials (README 'Security')."""
    port: int = 50051
    """gRPC port; 0 picks a free one."""
    health_check_seconds: float = 10.0
    """How often the dependencies are probed; health is NOT_SERVING while one is down."""
    log_level: str = "INFO"
    max_page_size: int = 1000
    """Largest page a list RPC serves; a larger page_size is rejected with INVALID_ARGUMENT."""
    default_page_size: int = 100
    """Page size used when a request leaves page_size at 0."""
    dashboard_stream_batch: int = 64
    """Dashboards per GetDashboards stream message."""
    max_workers: int = 32
    """Threads serving RPCs (and database connections the pool may open)."""
