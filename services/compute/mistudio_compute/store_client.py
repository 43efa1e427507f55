"""The compute service's client of the store: SAE records, the dashboard cache, feature stats.

Every failed call is turned back into the store's domain error (``error_from_rpc``), so an
unknown SAE reaches the compute client as NOT_FOUND with the store's resource details.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import grpc
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio.store.v1 import store_service_pb2_grpc as sgrpc
from mistudio_common.grpc_errors import error_from_rpc
from mistudio_common.server import insecure_channel

T = TypeVar("T")

_TIMEOUT_SECONDS = 60.0
_PAGE_SIZE = 1000


@dataclass(frozen=True, slots=True)
class FeatureStats:
    """What the compute service records per feature in the store's feature table."""

    feature_index: int
    activation_frequency: float
    max_activation: float


def _batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


class StoreClient:
    """Thin typed wrapper over StoreService for the calls the compute service makes."""

    def __init__(self, address: str) -> None:
        self._channel = insecure_channel(address)
        self._stub = sgrpc.StoreServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def get_sae(self, sae_id: str) -> spb.Sae:
        try:
            return self._stub.GetSae(spb.GetSaeRequest(sae_id=sae_id), timeout=_TIMEOUT_SECONDS).sae
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error

    def cached_features(self, sae_id: str, params: dpb.DashboardParams) -> set[int]:
        """Indices of the features with a dashboard cached under ``params``."""
        found: set[int] = set()
        token = ""
        while True:
            request = spb.ListCachedDashboardsRequest(
                sae_id=sae_id, params=params, page_size=_PAGE_SIZE, page_token=token
            )
            try:
                page = self._stub.ListCachedDashboards(request, timeout=_TIMEOUT_SECONDS)
            except grpc.RpcError as error:
                raise error_from_rpc(error) from error
            found.update(d.feature_index for d in page.dashboards)
            token = page.next_page_token
            if not token:
                return found

    def put_dashboards(
        self,
        sae_id: str,
        params: dpb.DashboardParams,
        dashboards: Iterable[dpb.FeatureDashboard],
        batch_size: int = 32,
    ) -> int:
        """Streams the dashboards to the store in batches; returns how many were written."""
        requests = (
            spb.PutDashboardsRequest(sae_id=sae_id, params=params, dashboards=batch)
            for batch in _batched(dashboards, batch_size)
        )
        try:
            response = self._stub.PutDashboards(requests, timeout=_TIMEOUT_SECONDS)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error
        return response.written_count

    def upsert_features(self, sae_id: str, stats: Sequence[FeatureStats]) -> int:
        """Records activation stats; labels and categories already stored are kept, because
        the store's upsert writes every column of the rows it is given."""
        if not stats:
            return 0
        indices = [s.feature_index for s in stats]
        kept = self._labels(sae_id, min(indices), max(indices) + 1)
        features = [
            spb.Feature(
                feature_index=s.feature_index,
                label=kept.get(s.feature_index, ("", ""))[0],
                category=kept.get(s.feature_index, ("", ""))[1],
                activation_frequency=s.activation_frequency,
                max_activation=s.max_activation,
            )
            for s in stats
        ]
        total = 0
        for batch in _batched(features, _PAGE_SIZE):
            request = spb.UpsertFeaturesRequest(sae_id=sae_id, features=batch)
            try:
                total += self._stub.UpsertFeatures(request, timeout=_TIMEOUT_SECONDS).upserted_count
            except grpc.RpcError as error:
                raise error_from_rpc(error) from error
        return total

    def _labels(self, sae_id: str, start: int, end: int) -> dict[int, tuple[str, str]]:
        """(label, category) of the labeled features in [start, end)."""
        kept: dict[int, tuple[str, str]] = {}
        token = ""
        while True:
            request = spb.ListFeaturesRequest(
                sae_id=sae_id,
                page_size=_PAGE_SIZE,
                page_token=token,
                filter=spb.FeatureFilter(index_start=start, index_end=end),
            )
            try:
                page = self._stub.ListFeatures(request, timeout=_TIMEOUT_SECONDS)
            except grpc.RpcError as error:
                raise error_from_rpc(error) from error
            kept.update(
                (f.feature_index, (f.label, f.category))
                for f in page.features
                if f.label or f.category
            )
            token = page.next_page_token
            if not token:
                return kept
