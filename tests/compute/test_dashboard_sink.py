"""The dashboard sink waits out a store that is briefly out of reach, and an abort ends the wait."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio_common.dashboard import DashboardParams
from mistudio_common.errors import Unavailable
from mistudio_common.retry import Patience
from mistudio_compute.dashboard_sink import DashboardSink
from mistudio_compute.store_client import FeatureStats


class FlakyStore:
    """Refuses the first ``failures`` writes as a restarting store would."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.cached: list[int] = []

    def put_dashboards(
        self,
        sae_id: str,
        params: DashboardParams,
        dashboards: Sequence[dpb.FeatureDashboard],
        owner: str,
    ) -> int:
        if self.failures:
            self.failures -= 1
            raise Unavailable("peer unavailable: connection refused")
        self.cached += [d.feature_index for d in dashboards]
        return len(dashboards)

    def upsert_features(self, sae_id: str, stats: Sequence[FeatureStats], owner: str) -> None:
        pass


def dashboards(n: int) -> list[dpb.FeatureDashboard]:
    return [dpb.FeatureDashboard(feature_index=i) for i in range(n)]


def test_a_store_that_comes_back_gets_every_dashboard() -> None:
    store = FlakyStore(failures=2)
    sink = DashboardSink(store, "s", DashboardParams(), batch_size=2,  # type: ignore[arg-type]
                         patience=Patience(seconds=5.0, first_delay=0.01))  # fmt: skip
    sink.add(dashboards(4))
    sink.close()
    assert sorted(store.cached) == [0, 1, 2, 3] and sink.written == 4


def test_a_store_that_stays_away_fails_the_write_after_the_patience() -> None:
    store = FlakyStore(failures=1000)
    sink = DashboardSink(store, "s", DashboardParams(), batch_size=2,  # type: ignore[arg-type]
                         patience=Patience(seconds=0.2, first_delay=0.01))  # fmt: skip
    sink.add(dashboards(2))
    with pytest.raises(Unavailable):
        sink.close()


def test_an_abort_ends_a_wait_for_the_store_at_once() -> None:
    store = FlakyStore(failures=1000)
    sink = DashboardSink(store, "s", DashboardParams(), batch_size=2,  # type: ignore[arg-type]
                         patience=Patience(seconds=600.0, first_delay=0.05))  # fmt: skip
    sink.add(dashboards(2))
    time.sleep(0.1)
    started = time.monotonic()
    sink.abort()
    assert time.monotonic() - started < 5.0
