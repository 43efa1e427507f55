"""Schema migrations, configured in code so the service needs no alembic.ini at runtime."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"

log = logging.getLogger(__name__)


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Brings the schema to ``revision``; a no-op when it is already there."""
    if revision == "head" and current_revision(engine) == head_revision(engine):
        return  # the common case at service start: one query instead of an Alembic run
    _run(engine, revision, command.upgrade)


def downgrade(engine: Engine, revision: str) -> None:
    _run(engine, revision, command.downgrade)


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision(engine: Engine) -> str | None:
    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def _run(engine: Engine, revision: str, action: Callable[[Config, str], None]) -> None:
    config = alembic_config(engine)
    with engine.connect() as connection:
        sqlite = connection.dialect.name == "sqlite"
        if sqlite:
            # SQLite rebuilds a table to change a constraint: dropping the old copy would cascade
            # to every child row. Its documented procedure: foreign keys off (outside the
            # transaction), migrate, check them, and on again.
            _sqlite_foreign_keys(connection, "OFF")
        try:
            with connection.begin():
                config.attributes["connection"] = connection
                action(config, revision)
                if sqlite and connection.exec_driver_sql("PRAGMA foreign_key_check").first():
                    raise RuntimeError("the migration left rows whose parent is missing")
        finally:
            if sqlite:
                _sqlite_foreign_keys(connection, "ON")
    log.info("schema migrated", extra={"revision": current_revision(engine)})


def _sqlite_foreign_keys(connection: Connection, setting: str) -> None:
    """On the driver's connection, outside any transaction: SQLite ignores it inside one."""
    cursor = connection.connection.cursor()
    cursor.execute(f"PRAGMA foreign_keys={setting}")
    cursor.close()
