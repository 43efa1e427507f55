"""Statements that differ by dialect or repeat across tables: bulk upsert and keyset filters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import InstrumentedAttribute, Session

from mistudio_store.db.models import Base


def upsert(
    session: Session,
    model: type[Base],
    rows: Sequence[dict[str, Any]],
    *,
    key: Sequence[str],
    update: Sequence[str],
    unless_equal: str | None = None,
) -> None:
    """INSERT … ON CONFLICT (key) DO UPDATE of ``update``, as one executemany.

    With ``unless_equal`` a conflicting row is rewritten only when that column differs, so an
    unchanged row keeps its timestamps.
    """
    if not rows:
        return
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    statement = insert(model)
    table = model.__table__
    where = None
    if unless_equal is not None:
        where = table.c[unless_equal] != statement.excluded[unless_equal]  # type: ignore[attr-defined]
    statement = statement.on_conflict_do_update(
        index_elements=list(key),
        set_={name: statement.excluded[name] for name in update},
        where=where,
    )
    session.execute(statement, list(rows))


def after(columns: Sequence[InstrumentedAttribute[Any]], key: Sequence[Any]) -> ColumnElement[bool]:
    """Rows strictly after ``key`` in ascending (columns) order: a row-value comparison."""
    return tuple_(*columns) > tuple(key)  # values typed by their columns


def before(
    columns: Sequence[InstrumentedAttribute[Any]], key: Sequence[Any]
) -> ColumnElement[bool]:
    """Rows strictly after ``key`` in descending (columns) order."""
    return tuple_(*columns) < tuple(key)
