"""A database that is down answers UNAVAILABLE (waited out by callers), never INTERNAL or SQL."""

from __future__ import annotations

import psycopg
from mistudio_common.errors import Unavailable
from mistudio_store.db.faults import database_fault
from sqlalchemy.exc import IntegrityError, OperationalError


def test_a_refused_connection_is_a_transient_fault_without_sql() -> None:
    error = OperationalError("SELECT secret FROM t", {}, psycopg.OperationalError("refused"))
    fault = database_fault(error)
    assert isinstance(fault, Unavailable)
    assert "SELECT" not in str(fault) and "OperationalError" in str(fault)


def test_a_constraint_violation_is_not_a_database_fault() -> None:
    error = IntegrityError("INSERT", {}, psycopg.IntegrityError("duplicate"))
    assert database_fault(error) is None
    assert database_fault(ValueError("x")) is None
