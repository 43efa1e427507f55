"""Alembic environment: runs on the connection handed over by mistudio_store.db.migrate."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from mistudio_store.db.models import Base

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    # Plain `alembic -x` use from a shell: the URL comes from the config's sqlalchemy.url.
    with create_engine(config.get_main_option("sqlalchemy.url", "")).connect() as conn:
        _run(conn)
