"""The schema migrations: up and down on both backends, and in step with the ORM models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from mistudio_store.db import migrate
from mistudio_store.db.engine import create_store_engine
from mistudio_store.db.models import Base
from sqlalchemy import inspect

STORE_TABLES = {"saes", "features", "explanations", "dashboards", "export_jobs"}


def test_upgrade_creates_every_table_and_downgrade_removes_them(empty_database_url: str) -> None:
    engine = create_store_engine(empty_database_url)
    try:
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision(engine)
        assert set(inspect(engine).get_table_names()) >= STORE_TABLES

        migrate.downgrade(engine, "base")
        assert migrate.current_revision(engine) is None
        assert not STORE_TABLES & set(inspect(engine).get_table_names())

        migrate.upgrade(engine)  # and back up again
        assert set(inspect(engine).get_table_names()) >= STORE_TABLES
    finally:
        engine.dispose()


def test_upgrading_a_migrated_database_changes_nothing(database_url: str) -> None:
    engine = create_store_engine(database_url)
    try:
        head = migrate.current_revision(engine)
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == head == migrate.head_revision(engine)
    finally:
        engine.dispose()


def test_models_match_the_migrated_schema(database_url: str) -> None:
    """Autogenerate finds nothing to do: the migrations describe exactly the ORM models."""
    engine = create_store_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()
