"""Feature hashes of export archives: one row per (job, feature), read back in pages.

A finished export records the content hash of every feature its archive holds; a later export
compares them to copy unchanged features' files. They live beside the job record, not in it,
so reading or updating a job costs the same whatever the SAE's width.
"""

from __future__ import annotations

from collections.abc import Sequence

from mistudio_common.errors import InvalidArgument
from sqlalchemy import select
from sqlalchemy.orm import Session

from mistudio_store import validation
from mistudio_store.base import RepositoryBase
from mistudio_store.db.models import ExportFeatureHashRow, ExportJobRow
from mistudio_store.db.statements import upsert
from mistudio_store.jobs import job_not_found
from mistudio_store.pagination import Page, page_request, scope_of
from mistudio_store.records import FeatureHash

MAX_HASHES_PER_PUT = 10_000
DEFAULT_HASH_PAGE = 1000
MAX_HASH_PAGE = 10_000
HASH_LENGTH = 64
"""Hex SHA-256."""


class ExportFeatureHashes(RepositoryBase):
    def put_export_feature_hashes(self, job_id: str, hashes: Sequence[FeatureHash]) -> int:
        """Records (or replaces) the listed features' hashes for the job; returns how many."""
        validation.job_id(job_id, "job_id")
        _check_hashes(hashes)
        rows = {
            h.feature_index: {
                "job_id": job_id,
                "feature_index": h.feature_index,
                "content_hash": h.content_hash,
            }
            for h in hashes
        }
        with self._sessions.write.begin() as session:
            _require_job(session, job_id)
            upsert(
                session,
                ExportFeatureHashRow,
                list(rows.values()),
                key=["job_id", "feature_index"],
                update=["content_hash"],
            )
        return len(rows)

    def list_export_feature_hashes(
        self, job_id: str, page_size: int = 0, page_token: str = ""
    ) -> Page[FeatureHash]:
        """The job's hashes in feature_index order."""
        validation.job_id(job_id, "job_id")
        page = page_request(
            page_size,
            page_token,
            scope=scope_of("feature_hashes", job_id),
            key_types=(int,),
            default=DEFAULT_HASH_PAGE,
            maximum=MAX_HASH_PAGE,
        )
        query = select(ExportFeatureHashRow.feature_index, ExportFeatureHashRow.content_hash).where(
            ExportFeatureHashRow.job_id == job_id
        )
        if page.after:
            query = query.where(ExportFeatureHashRow.feature_index > page.after[0])
        query = query.order_by(ExportFeatureHashRow.feature_index).limit(page.limit)
        with self._sessions.read() as session:
            _require_job(session, job_id)
            rows, token = page.finish(session.execute(query).all(), lambda r: [r.feature_index])
        return Page([FeatureHash(feature_index=i, content_hash=h) for i, h in rows], token)


def _require_job(session: Session, job_id: str) -> None:
    if session.get(ExportJobRow, job_id) is None:
        raise job_not_found(job_id)


def _check_hashes(hashes: Sequence[FeatureHash]) -> None:
    if len(hashes) > MAX_HASHES_PER_PUT:
        raise InvalidArgument(
            f"{len(hashes)} hashes in one request",
            field="hashes",
            fix=f"send at most {MAX_HASHES_PER_PUT} hashes per request",
        )
    for i, item in enumerate(hashes):
        if item.feature_index < 0:
            raise InvalidArgument(
                f"feature index {item.feature_index} is negative",
                field=f"hashes[{i}].feature_index",
                fix="give the feature's 0-based index in the SAE",
            )
        if len(item.content_hash) != HASH_LENGTH or not _is_hex(item.content_hash):
            raise InvalidArgument(
                "content_hash is not a hex SHA-256",
                field=f"hashes[{i}].content_hash",
                fix=f"give the feature's SHA-256 as {HASH_LENGTH} hex digits",
            )


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)
