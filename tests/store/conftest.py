"""Store fixtures: each test gets an empty, migrated database on SQLite and on PostgreSQL.

Migrations run once per session and backend, and one server per backend serves the session;
each test empties the tables first (creating a database and a server per test would cost
several times the tests themselves). PostgreSQL tests skip when the server is
unreachable, except under CI=true, where they fail: CI must not go green without them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from mistudio.store.v1 import store_service_pb2_grpc
from mistudio_common.server import RunningServer, insecure_channel
from mistudio_store.config import StoreSettings
from mistudio_store.db import migrate
from mistudio_store.db.engine import create_store_engine
from mistudio_store.server import build_store_server
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

PG_ADMIN_URL = os.environ.get(
    "MISTUDIO_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
STORE_TABLES = (
    "export_feature_hashes",
    "export_jobs",
    "dashboards",
    "explanations",
    "features",
    "saes",
)
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[Engine]:
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect():
            pass
    except OperationalError as error:
        engine.dispose()
        reason = f"PostgreSQL is unreachable at {PG_ADMIN_URL}: {error.orig}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason + " (set CI=true to make this a failure)")
    yield engine
    engine.dispose()


class PgDatabases:
    """Creates uniquely named test databases and drops them all at the end."""

    def __init__(self, admin: Engine) -> None:
        self.admin = admin
        self.names: list[str] = []

    def create(self) -> str:
        name = f"mistudio_test_{uuid.uuid4().hex[:12]}"
        with self.admin.connect() as connection:
            connection.execute(text(f"CREATE DATABASE {name}"))
        self.names.append(name)
        return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with self.admin.connect() as connection:
            for name in reversed(self.names):
                connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture(scope="session")
def pg_databases(pg_admin: Engine) -> Iterator[PgDatabases]:
    databases = PgDatabases(pg_admin)
    yield databases
    databases.drop_all()


def _migrated(url: str) -> None:
    engine = create_store_engine(url)
    migrate.upgrade(engine)
    engine.dispose()


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="session")
def shared_database(
    backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Engine]]:
    """The migrated database the tests of one backend share, and an engine to empty it."""
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'store.db'}"
    else:
        url = request.getfixturevalue("pg_databases").create()
    _migrated(url)
    engine = (
        create_store_engine(url) if backend == "sqlite" else create_engine(url, poolclass=NullPool)
    )
    yield url, engine
    engine.dispose()


@pytest.fixture
def database_url(shared_database: tuple[str, Engine]) -> str:
    """The shared database, emptied: every test starts from a blank, migrated store."""
    url, engine = shared_database
    with engine.begin() as connection:
        for table in STORE_TABLES:  # children first; DELETE beats TRUNCATE on tiny tables
            connection.execute(text(f"DELETE FROM {table}"))
    return url


@pytest.fixture
def empty_database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database with no tables at all (for migration tests)."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    databases: PgDatabases = request.getfixturevalue("pg_databases")
    return databases.create()


def settings_for(database_url: str, **overrides: Any) -> StoreSettings:
    return StoreSettings(database_url=database_url, host="127.0.0.1", port=0, **overrides)


@pytest.fixture(scope="session")
def server(shared_database: tuple[str, Engine]) -> Iterator[RunningServer]:
    """One server per backend for the whole session (tests are isolated by database_url)."""
    running = build_store_server(settings_for(shared_database[0], max_page_size=50))
    yield running
    running.stop(grace_seconds=0)


@pytest.fixture(scope="session")
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with insecure_channel(server.address) as channel:
        yield channel


@pytest.fixture
def stub(channel: grpc.Channel, database_url: str) -> store_service_pb2_grpc.StoreServiceStub:
    """A client of the shared server, on an emptied database."""
    return store_service_pb2_grpc.StoreServiceStub(channel)
