"""The dashboard cache: dashboards filed under (SAE, params key, feature index).

The params key is the hash of the resolved computation parameters, so a lookup with different
parameters (or a new computation_version) is a miss. Writes are bulk upserts of only the listed
features; a row whose content hash is unchanged is left as it was. A dashboard is kept as its
deterministic protobuf wire form (nothing queries inside it), the bytes the writer sends and a
reader gets: the store never parses or serialises one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from google.protobuf import json_format
from mistudio.common.v1 import dashboard_pb2
from mistudio_common.dashboard_codec import (
    content_hash_of,
    params_from_pb,
    params_key,
    params_to_pb,
)
from sqlalchemy import select

from mistudio_store import convert, validation
from mistudio_store.base import RepositoryBase
from mistudio_store.db.models import DashboardRow
from mistudio_store.db.statements import upsert
from mistudio_store.pagination import Page, scope_of
from mistudio_store.records import FeatureHash, SerializedDashboard


@dataclass(frozen=True)
class DashboardBatch:
    """One GetDashboards stream message; only the last carries ``missing``."""

    dashboards: list[SerializedDashboard]
    missing: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class ResolvedParams:
    """Request params with defaults filled in, their cache key and stored JSON form."""

    key: str
    computation_version: str
    document: dict[str, object]

    @classmethod
    def of(cls, params: dashboard_pb2.DashboardParams) -> ResolvedParams:
        resolved = params_from_pb(params)
        document = json_format.MessageToDict(
            params_to_pb(resolved),
            preserving_proto_field_name=True,
            always_print_fields_with_no_presence=True,
        )
        return cls(params_key(resolved), resolved.computation_version, document)


class DashboardCache(RepositoryBase):
    def put_dashboards(
        self,
        sae_id: str,
        params: dashboard_pb2.DashboardParams,
        dashboards: Sequence[SerializedDashboard],
        owner: str | None = None,
    ) -> tuple[int, str]:
        """Writes one batch; returns (dashboards written, params key)."""
        resolved = ResolvedParams.of(params)
        validation.max_length(resolved.computation_version, 64, "params.computation_version")
        at = convert.now()
        with self._sessions.write.begin() as session:
            sae = self._sae(session, sae_id, owner)
            indices = [d.feature_index for d in dashboards]
            validation.feature_indices(
                indices, sae.d_sae, "serialized_dashboards[{i}].feature_index", unique=True
            )
            rows = [
                {
                    "sae_pk": sae.id,
                    "params_key": resolved.key,
                    "feature_index": d.feature_index,
                    "params": resolved.document,
                    "computation_version": resolved.computation_version,
                    "content_hash": content_hash_of(d.data),
                    "data": d.data,
                    "updated_at": at,
                }
                for d in dashboards
            ]
            upsert(
                session,
                DashboardRow,
                rows,
                key=["sae_pk", "params_key", "feature_index"],
                update=["params", "computation_version", "content_hash", "data", "updated_at"],
                unless_equal="content_hash",
            )
        return len(rows), resolved.key

    def get_dashboards(
        self,
        sae_id: str,
        params: dashboard_pb2.DashboardParams,
        feature_indices: Sequence[int] = (),
        owner: str | None = None,
    ) -> Iterator[DashboardBatch]:
        """Batches of cached dashboards in request order (all cached ones when none are named).

        Each batch is read in its own short transaction, so a slow client holds no connection.
        """
        key = ResolvedParams.of(params).key
        with self._sessions.read() as session:
            sae = self._sae(session, sae_id, owner)
            validation.feature_indices(
                feature_indices, sae.d_sae, "feature_indices[{i}]", unique=False
            )
        if feature_indices:
            chunks = self._requested_chunks(sae.id, key, list(dict.fromkeys(feature_indices)))
        else:
            chunks = self._all_chunks(sae.id, key)
        missing: list[int] = []
        pending: list[SerializedDashboard] | None = None
        for found, absent in chunks:
            missing.extend(absent)
            if found:
                if pending:
                    yield DashboardBatch(pending)
                pending = found
        yield DashboardBatch(pending or [], missing)

    def list_cached_dashboards(
        self,
        sae_id: str,
        params: dashboard_pb2.DashboardParams,
        page_size: int = 0,
        page_token: str = "",
        owner: str | None = None,
    ) -> Page[FeatureHash]:
        """Features with a cached dashboard for these params, in index order, with hashes."""
        key = ResolvedParams.of(params).key
        scope = scope_of("dashboards", sae_id, owner, key)
        page = self._page(page_size, page_token, scope, (int,))
        with self._sessions.read() as session:
            sae = self._sae(session, sae_id, owner)
            query = select(DashboardRow.feature_index, DashboardRow.content_hash).where(
                DashboardRow.sae_pk == sae.id, DashboardRow.params_key == key
            )
            if page.after:
                query = query.where(DashboardRow.feature_index > page.after[0])
            query = query.order_by(DashboardRow.feature_index).limit(page.limit)
            rows, token = page.finish(session.execute(query).all(), lambda r: [r.feature_index])
        items = [FeatureHash(feature_index=i, content_hash=h) for i, h in rows]
        return Page(items, token)

    def _requested_chunks(
        self, sae_pk: int, key: str, wanted: list[int]
    ) -> Iterator[tuple[list[SerializedDashboard], list[int]]]:
        size = self._dashboard_batch
        for chunk in (wanted[i : i + size] for i in range(0, len(wanted), size)):
            with self._sessions.read() as session:
                query = select(DashboardRow.feature_index, DashboardRow.data).where(
                    DashboardRow.sae_pk == sae_pk,
                    DashboardRow.params_key == key,
                    DashboardRow.feature_index.in_(chunk),
                )
                data: dict[int, bytes] = dict(session.execute(query).all())
            found = [SerializedDashboard(i, data[i]) for i in chunk if i in data]
            yield found, [i for i in chunk if i not in data]

    def _all_chunks(
        self, sae_pk: int, key: str
    ) -> Iterator[tuple[list[SerializedDashboard], list[int]]]:
        last = -1
        while True:
            with self._sessions.read() as session:
                query = (
                    select(DashboardRow.feature_index, DashboardRow.data)
                    .where(
                        DashboardRow.sae_pk == sae_pk,
                        DashboardRow.params_key == key,
                        DashboardRow.feature_index > last,
                    )
                    .order_by(DashboardRow.feature_index)
                    .limit(self._dashboard_batch)
                )
                rows = session.execute(query).all()
            if not rows:
                return
            last = rows[-1][0]
            yield [SerializedDashboard(i, data) for i, data in rows], []
