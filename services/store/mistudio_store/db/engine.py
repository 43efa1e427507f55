"""Engines and sessions for PostgreSQL or SQLite, chosen by the URL alone.

SQLite gets what it needs to behave like the server database: foreign keys (for the cascading
delete), WAL (readers never wait for the writer), a busy timeout, and ``BEGIN IMMEDIATE`` for
write transactions, because a deferred transaction that reads and then writes fails at once
with "database is locked" when another writer got there first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import Session, sessionmaker

SQLITE_BUSY_TIMEOUT_S = 30.0
_BEGIN_OPTION = "mistudio_sqlite_begin"


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def create_store_engine(url: str, pool_size: int = 10) -> Engine:
    """An engine for ``url``; the parent folder of a SQLite file is created.

    ``pool_size`` bounds the open connections; give it the number of RPC threads, since a call
    holds at most one connection at a time.
    """
    json_options: dict[str, Any] = {
        "json_serializer": lambda value: orjson.dumps(value).decode(),
        "json_deserializer": orjson.loads,
    }
    if not is_sqlite(url):
        return create_engine(
            url, pool_size=pool_size, max_overflow=0, pool_pre_ping=True, **json_options
        )
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
        pool_size=pool_size,
        max_overflow=0,
        **json_options,
    )
    event.listen(engine, "connect", _configure_sqlite_connection)
    event.listen(engine, "begin", _begin)
    return engine


def _configure_sqlite_connection(dbapi_connection: Any, _record: Any) -> None:
    # We issue BEGIN ourselves (see _begin); pysqlite's implicit transactions get in the way.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    cursor.close()


def _begin(connection: Any) -> None:
    mode = connection.get_execution_options().get(_BEGIN_OPTION, "DEFERRED")
    connection.exec_driver_sql(f"BEGIN {mode}")


class SessionFactories:
    """Two session factories over one pool: ``read`` and ``write`` (IMMEDIATE on SQLite)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.read: sessionmaker[Session] = sessionmaker(engine, expire_on_commit=False)
        write_engine = engine.execution_options(**{_BEGIN_OPTION: "IMMEDIATE"})
        self.write: sessionmaker[Session] = sessionmaker(write_engine, expire_on_commit=False)
