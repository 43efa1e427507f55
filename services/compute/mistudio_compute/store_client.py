"""The compute service's client of the store: SAE records, the dashboard cache, feature stats.

Every call waits for a store that is starting or restarting (``wait_for_ready``) up to the fault
patience (``PeerWait``). Every failed call is turned back into the store's domain error
(``error_from_rpc``), so an unknown SAE reaches the compute client as NOT_FOUND with the store's
resource details.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio.store.v1 import store_service_pb2_grpc as sgrpc
from mistudio_common.auth import LOOPBACK_PEER, PeerCredentials
from mistudio_common.dashboard import DashboardParams
from mistudio_common.dashboard_codec import dashboard_bytes, params_to_pb
from mistudio_common.grpc_errors import call_peer, pages
from mistudio_common.retry import DEFAULT_PEER_WAIT, PeerWait
from mistudio_common.server import open_channel

T = TypeVar("T")

_PAGE_SIZE = 1000
STATS_FIELDS = ("activation_frequency", "max_activation")
"""What a computation writes to the store's features; labels belong to people."""


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

    def __init__(
        self,
        address: str,
        peer: PeerCredentials = LOOPBACK_PEER,
        wait: PeerWait = DEFAULT_PEER_WAIT,
    ) -> None:
        self._channel = open_channel(address, peer)
        self._stub = sgrpc.StoreServiceStub(self._channel)
        self._unary = wait.call_options()

    def close(self) -> None:
        self._channel.close()

    def get_sae(self, sae_id: str, owner: str = "") -> spb.Sae:
        """``owner``'s SAE; empty: the only SAE with this id (the store refuses a shared id)."""
        request = spb.GetSaeRequest(sae_id=sae_id, owner=owner)
        return call_peer(lambda: self._stub.GetSae(request, **self._unary)).sae

    def cached_features(self, sae_id: str, params: DashboardParams, owner: str = "") -> set[int]:
        """Indices of the features with a dashboard cached under ``params``."""
        key = params_to_pb(params)

        def fetch(token: str) -> tuple[Sequence[spb.CachedDashboard], str]:
            request = spb.ListCachedDashboardsRequest(
                sae_id=sae_id, owner=owner, params=key, page_size=_PAGE_SIZE, page_token=token
            )
            page = call_peer(lambda: self._stub.ListCachedDashboards(request, **self._unary))
            return page.dashboards, page.next_page_token

        return {d.feature_index for d in pages(fetch)}

    def put_dashboards(
        self,
        sae_id: str,
        params: DashboardParams,
        dashboards: Iterable[dpb.FeatureDashboard],
        owner: str = "",
        batch_size: int = 32,
    ) -> int:
        """Streams the dashboards to the store in batches, as the bytes it keeps (it neither
        parses nor serialises them); returns how many were written."""
        key = params_to_pb(params)
        serialized = (
            spb.SerializedDashboard(feature_index=d.feature_index, data=dashboard_bytes(d))
            for d in dashboards
        )
        requests = (
            spb.PutDashboardsRequest(
                sae_id=sae_id, owner=owner, params=key, serialized_dashboards=batch
            )
            for batch in _batched(serialized, batch_size)
        )
        return call_peer(lambda: self._stub.PutDashboards(requests, **self._unary)).written_count

    def upsert_features(self, sae_id: str, stats: Sequence[FeatureStats], owner: str = "") -> int:
        """Records activation stats only: labels and categories already stored are kept."""
        features = [
            spb.Feature(
                feature_index=s.feature_index,
                activation_frequency=s.activation_frequency,
                max_activation=s.max_activation,
            )
            for s in stats
        ]
        total = 0
        for batch in _batched(features, _PAGE_SIZE):
            request = spb.UpsertFeaturesRequest(
                sae_id=sae_id, owner=owner, features=batch, update_mask=STATS_FIELDS
            )
            total += call_peer(
                lambda: self._stub.UpsertFeatures(request, **self._unary)  # noqa: B023
            ).upserted_count
        return total
