"""The collect stage against an in-memory store: batches are staged and checkpointed, and a
run that resumes after a fault reads only the batches not yet staged."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import pytest
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio_common.dashboard import DashboardParams
from mistudio_common.dashboard_codec import dashboard_bytes
from mistudio_common.errors import Unavailable
from mistudio_export.collect import Collected, Staging
from mistudio_export.delta import FeatureHashes
from mistudio_export.feature_ranges import feature_ranges
from mistudio_export.peers import FeatureFilter, FeatureRecord
from mistudio_export.records import ExplanationRecord
from mistudio_export.runtime import JobRuntime
from mistudio_export.selection import StatisticFilter


def collect(job: JobRuntime, store: Records, candidates: range, batch_size: int) -> Collected:
    staging = Staging(
        job, store, DashboardParams(), candidates, StatisticFilter(), None, batch_size
    )
    return staging.result(lambda _read, _message: None)


class Records:
    """Cached dashboards of features 0..n-1; ``down_at`` makes that call fail once."""

    def __init__(self, n: int, down_at: int | None = None) -> None:
        self.n, self.down_at = n, down_at
        self.asked: list[list[int]] = []

    def dashboards(
        self, sae_id: str, params: DashboardParams, indices: Sequence[int], owner: str = ""
    ) -> tuple[list[bytes], list[int]]:
        self.asked.append(list(indices))
        if self.down_at == len(self.asked) - 1:
            self.down_at = None
            raise Unavailable("peer unavailable: the store is restarting")
        return [dashboard_bytes(dpb.FeatureDashboard(feature_index=i)) for i in indices], []

    def features(
        self, sae_id: str, feature_filter: FeatureFilter, owner: str = ""
    ) -> Iterator[FeatureRecord]:
        return iter([])

    def explanations(
        self, sae_id: str, indices: Sequence[int] = (), owner: str = ""
    ) -> Iterator[ExplanationRecord]:
        return iter([])


def test_a_resumed_collect_reads_only_the_batches_not_yet_staged(job: JobRuntime) -> None:
    store = Records(6, down_at=1)
    with pytest.raises(Unavailable):
        collect(job, store, range(6), batch_size=2)
    assert job.checkpoint.collect.chunks_done == 1
    assert store.asked[:2] == [[0, 1], [2, 3]]  # and, read ahead, perhaps the next one
    asked_before = len(store.asked)
    collected = collect(job, store, range(6), batch_size=2)
    assert store.asked[asked_before:] == [[2, 3], [4, 5]]
    assert sorted(collected.hashes) == [0, 1, 2, 3, 4, 5]
    assert job.checkpoint.collect.chunks_done == 3


def test_a_resumed_collect_keeps_every_hash_as_written(job: JobRuntime) -> None:
    whole = dict(collect(job, Records(6), range(6), batch_size=4).hashes)
    job.checkpoint.collect.chunks_done = 1  # the second batch read again, the first from disk
    again = collect(job, Records(6), range(6), batch_size=4).hashes
    assert dict(again) == whole and len(again) == 6
    assert all(len(h) == 64 and int(h, 16) >= 0 for h in whole.values())
    assert (7 in again, again.get(7), -1 in again, 2**70 in again) == (False, None, False, False)


def test_a_range_is_handed_over_once_the_batch_after_its_cut_is_staged(job: JobRuntime) -> None:
    """The formats are written from the first ranges while the later batches are still read."""
    store = Records(1300)
    staging = Staging(job, store, DashboardParams(), range(1300), StatisticFilter(), None, 128)
    ranges = feature_ranges(staging.chunks(lambda _read, _message: None), 128)
    first = next(ranges)
    assert first.indices == tuple(range(1024))
    assert len(store.asked) == 10  # of 11 batches: nine staged, the next one read ahead
    assert [r.indices for r in ranges] == [tuple(range(1024, 1300))]
    assert len(store.asked) == 11


def test_feature_hashes_refuse_an_index_given_twice_or_a_value_not_a_digest() -> None:
    digest = "ab" * 32
    with pytest.raises(ValueError, match="two hashes"):
        FeatureHashes.joined([FeatureHashes.of({3: digest}), FeatureHashes.of({3: digest})])
    with pytest.raises(ValueError, match="SHA-256"):
        FeatureHashes.of({3: "abc"})
