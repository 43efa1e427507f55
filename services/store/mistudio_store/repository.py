"""Every store operation over SQLAlchemy sessions, on plain values (``records``).

The gRPC servicer translates its messages for this class; it validates what it is given,
raises the shared domain errors (never grpc ones), and keeps each call in one transaction.
The dashboard cache (``dashboards.py``), export jobs (``jobs.py``) and their feature hashes
(``feature_hashes.py``) are mixed into the same class, so callers see one object.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from mistudio_common.errors import AlreadyExists, InvalidArgument
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from mistudio_store import convert, validation
from mistudio_store.dashboards import DashboardCache
from mistudio_store.db.models import ExplanationRow, FeatureRow, SaeRow
from mistudio_store.db.statements import after, upsert
from mistudio_store.feature_hashes import ExportFeatureHashes
from mistudio_store.jobs import ExportJobs
from mistudio_store.pagination import Page, scope_of
from mistudio_store.records import Explanation, Feature, FeatureFilter, Sae


class StoreRepository(DashboardCache, ExportJobs, ExportFeatureHashes):
    """SAEs, features, explanations, cached dashboards, export jobs and their feature hashes."""

    # SAEs

    def create_sae(self, sae: Sae) -> Sae:
        validation.sae(sae)
        row = convert.sae_row(sae, convert.now())
        duplicate = AlreadyExists(
            f"you already have an SAE with id {sae.sae_id!r}",
            field="sae.sae_id",
            fix="pick another sae_id, or delete the stored SAE first",
        )
        try:
            with self._sessions.write.begin() as session:
                if self._find_sae(session, sae.sae_id, sae.owner) is not None:
                    raise duplicate
                session.add(row)
        except IntegrityError as error:  # a concurrent create won the race
            raise duplicate from error
        return convert.sae_of(row)

    def get_sae(self, sae_id: str, owner: str | None = None) -> Sae:
        """``owner``'s SAE (ids are unique per owner); None: the only one with this id."""
        with self._sessions.read() as session:
            return convert.sae_of(self._sae(session, sae_id, owner))

    def list_saes(
        self, page_size: int = 0, page_token: str = "", owner: str | None = None
    ) -> Page[Sae]:
        """In (sae_id, owner) order; only ``owner``'s when given."""
        page = self._page(page_size, page_token, scope_of("saes", owner or ""), (str, str))
        order = (SaeRow.sae_id, SaeRow.owner)  # owners may share an id
        query = select(SaeRow).order_by(*order).limit(page.limit)
        if owner is not None:
            query = query.where(SaeRow.owner == owner)
        if page.after:
            query = query.where(after(order, page.after))
        with self._sessions.read() as session:
            rows, token = page.finish(session.scalars(query).all(), lambda r: [r.sae_id, r.owner])
            return Page([convert.sae_of(r) for r in rows], token)

    def delete_sae(self, sae_id: str, owner: str | None = None) -> None:
        """Deletes the SAE; the foreign keys cascade to everything stored for it."""
        with self._sessions.write.begin() as session:
            session.execute(delete(SaeRow).where(SaeRow.id == self._sae(session, sae_id, owner).id))

    # Features

    def upsert_features(
        self,
        sae_id: str,
        features: Sequence[Feature],
        update_mask: Sequence[str] = (),
        owner: str | None = None,
    ) -> int:
        """Writes the listed features in one batch; other features of the SAE are untouched.

        Existing rows get only the fields named in ``update_mask`` (all when empty); new rows
        get every field."""
        columns = validation.feature_update_mask(update_mask)
        at = convert.now()
        with self._sessions.write.begin() as session:
            sae = self._sae(session, sae_id, owner)
            validation.features(features, sae.d_sae)
            upsert(
                session,
                FeatureRow,
                [convert.feature_values(sae.id, f, at) for f in features],
                key=["sae_pk", "feature_index"],
                update=[*columns, "updated_at"],
            )
        return len(features)

    def list_features(
        self,
        sae_id: str,
        page_size: int = 0,
        page_token: str = "",
        feature_filter: FeatureFilter | None = None,
        owner: str | None = None,
    ) -> Page[Feature]:
        """In feature_index order; every given filter must match."""
        f = feature_filter or FeatureFilter()
        _check_index_range(f)
        scope = scope_of("features", sae_id, owner, f)
        page = self._page(page_size, page_token, scope, (int,))
        with self._sessions.read() as session:
            sae = self._sae(session, sae_id, owner)
            query = select(FeatureRow).where(FeatureRow.sae_pk == sae.id)
            if f.index_start:
                query = query.where(FeatureRow.feature_index >= f.index_start)
            if f.index_end:
                query = query.where(FeatureRow.feature_index < f.index_end)
            if f.labeled_only:
                query = query.where(FeatureRow.label != "")
            if f.label_contains:
                query = query.where(FeatureRow.label.icontains(f.label_contains, autoescape=True))
            if f.category:
                query = query.where(FeatureRow.category == f.category)
            if page.after:
                query = query.where(FeatureRow.feature_index > page.after[0])
            query = query.order_by(FeatureRow.feature_index).limit(page.limit)
            rows, token = page.finish(session.scalars(query).all(), lambda r: [r.feature_index])
            return Page([convert.feature_of(r) for r in rows], token)

    # Explanations

    def add_explanations(
        self, sae_id: str, explanations: Sequence[Explanation], owner: str | None = None
    ) -> list[Explanation]:
        """Adds the explanations, or updates the score and date of an equal one already stored
        (same feature, method, model and text): giving a file again never duplicates or drops.
        Returns them with ids; a bad one stores nothing."""
        at = convert.now()
        with self._sessions.write.begin() as session:
            sae = self._sae(session, sae_id, owner)
            validation.explanations(explanations, sae.d_sae)
            indices = {e.feature_index for e in explanations}
            stored = {
                _explanation_key(r): r
                for r in session.scalars(
                    select(ExplanationRow).where(
                        ExplanationRow.sae_pk == sae.id,
                        ExplanationRow.feature_index.in_(indices),
                    )
                )
            }
            rows = []
            for e in explanations:
                row = stored.get(_explanation_key(e))
                if row is None:
                    row = ExplanationRow(sae_pk=sae.id, feature_index=e.feature_index,
                                         description=e.description, method=e.method,
                                         explainer_model=e.explainer_model)  # fmt: skip
                    session.add(row)
                    stored[_explanation_key(e)] = row
                row.score = e.score
                row.created_at = e.created_at or at
                rows.append(row)
            session.flush()
            return [convert.explanation_of(r) for r in rows]

    def list_explanations(
        self,
        sae_id: str,
        page_size: int = 0,
        page_token: str = "",
        feature_indices: Sequence[int] = (),
        owner: str | None = None,
    ) -> Page[Explanation]:
        """Ordered by (feature_index, created_at, id); only ``feature_indices`` when given."""
        wanted = sorted(set(feature_indices))
        scope = scope_of("explanations", sae_id, owner, wanted)
        page = self._page(page_size, page_token, scope, (int, datetime, int))
        order = (ExplanationRow.feature_index, ExplanationRow.created_at, ExplanationRow.id)
        with self._sessions.read() as session:
            sae = self._sae(session, sae_id, owner)
            validation.feature_indices(
                feature_indices, sae.d_sae, "feature_indices[{i}]", unique=False
            )
            query = select(ExplanationRow).where(ExplanationRow.sae_pk == sae.id)
            if wanted:
                query = query.where(ExplanationRow.feature_index.in_(wanted))
            if page.after:
                query = query.where(after(order, page.after))
            query = query.order_by(*order).limit(page.limit)
            rows, token = page.finish(
                session.scalars(query).all(),
                lambda r: [r.feature_index, convert.utc(r.created_at), r.id],
            )
            return Page([convert.explanation_of(r) for r in rows], token)


def _check_index_range(f: FeatureFilter) -> None:
    if f.index_start < 0:
        raise InvalidArgument(
            f"index_start is {f.index_start}", field="filter.index_start", fix="give >= 0"
        )
    if f.index_end and f.index_end <= f.index_start:
        raise InvalidArgument(
            f"index_end {f.index_end} is not above index_start {f.index_start}",
            field="filter.index_end",
            fix="give index_end > index_start, or 0 for no upper bound",
        )


def _explanation_key(e: ExplanationRow | Explanation) -> tuple[int, str, str, str]:
    return (e.feature_index, e.method, e.explainer_model, e.description)
