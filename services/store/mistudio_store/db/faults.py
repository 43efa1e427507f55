"""A lost or refused database connection is a transient fault, never an internal error.

PostgreSQL restarting (``AdminShutdown``), refusing connections or dropping one mid-statement
reaches the store as a DBAPI error; callers see UNAVAILABLE, which they wait out, and the next
call gets a fresh connection (the pool pre-pings and discards the dead ones). The message names
the driver's error class only: SQL text never leaves the store.
"""

from __future__ import annotations

from mistudio_common.errors import MistudioError, Unavailable
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError


def database_fault(error: BaseException) -> MistudioError | None:
    if not isinstance(error, DBAPIError):
        return None
    lost = isinstance(error, (OperationalError, InterfaceError)) or error.connection_invalidated
    if not lost:
        return None
    cause = type(error.orig).__name__ if error.orig is not None else type(error).__name__
    return Unavailable(
        f"the store's database is unreachable ({cause})",
        fix="the store reconnects by itself once PostgreSQL is back; retry later",
    )
