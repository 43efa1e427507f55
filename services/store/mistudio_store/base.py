"""What every part of the repository shares: sessions, page requests and the SAE lookup."""

from __future__ import annotations

from collections.abc import Sequence

from mistudio_common.errors import InvalidArgument, NotFound
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from mistudio_store import validation
from mistudio_store.db.engine import SessionFactories
from mistudio_store.db.models import SaeRow
from mistudio_store.pagination import PageRequest, page_request


class RepositoryBase:
    def __init__(
        self,
        sessions: SessionFactories,
        *,
        default_page_size: int = 100,
        max_page_size: int = 1000,
        dashboard_batch: int = 64,
    ) -> None:
        self._sessions = sessions
        self._default_page_size = default_page_size
        self._max_page_size = max_page_size
        self._dashboard_batch = dashboard_batch

    def ping(self) -> None:
        """Raises when the database cannot be reached (the health check's probe)."""
        with self._sessions.read() as session:
            session.execute(text("SELECT 1"))

    def close(self) -> None:
        """Closes the connection pool (the server calls it on stop)."""
        self._sessions.engine.dispose()

    def _page(
        self, page_size: int, page_token: str, scope: str, key_types: Sequence[type]
    ) -> PageRequest:
        return page_request(
            page_size,
            page_token,
            scope=scope,
            key_types=key_types,
            default=self._default_page_size,
            maximum=self._max_page_size,
        )

    @staticmethod
    def _find_sae(session: Session, sae_id: str, owner: str | None) -> SaeRow | None:
        """``owner``'s SAE; with owner None, the only SAE with this id, whoever owns it."""
        query = select(SaeRow).where(SaeRow.sae_id == sae_id)
        if owner is not None:
            return session.scalars(query.where(SaeRow.owner == owner)).one_or_none()
        rows = session.scalars(query.limit(2)).all()
        if len(rows) > 1:
            raise InvalidArgument(
                f"several owners have an SAE with id {sae_id!r}",
                field="owner",
                fix="name the SAE's owner in the request's owner field",
            )
        return rows[0] if rows else None

    def _sae(
        self, session: Session, sae_id: str, owner: str | None, field: str = "sae_id"
    ) -> SaeRow:
        """The SAE row; InvalidArgument for a malformed id, NotFound for an unknown one (or
        another owner's: ids are unique per owner)."""
        validation.sae_id(sae_id, field)
        row = self._find_sae(session, sae_id, owner)
        if row is None:
            raise sae_not_found(sae_id)
        return row


def sae_not_found(sae_id: str) -> NotFound:
    return NotFound(
        f"no SAE with id {sae_id!r}",
        resource_type="mistudio.store.v1.Sae",
        resource_name=sae_id,
        fix="create it with CreateSae, or list stored SAEs with ListSaes",
    )
