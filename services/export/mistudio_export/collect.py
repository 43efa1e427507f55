"""Reading the selected features' dashboards from the cache into the job's staging folder.

Features are read in batches in index order; each batch is filtered by the statistic filters,
hashed, written to ``staging/work/dashboards/chunk-N.bin`` (its hashes beside it, in
``chunk-N.hashes.json``) and checkpointed, so a resumed job continues with the next batch. The
checkpoint holds only the batch count: with a hash per feature in it, every save rewrote all
hashes so far, quadratic in the feature count. The staged chunks come out as a stream, so the
formats are written from the first ones while the later ones are still read; every later step
reads the staged copy, never the store again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio_common.dashboard import DashboardParams
from mistudio_common.dashboard_codec import content_hash_of
from mistudio_common.errors import FailedPrecondition

from mistudio_export.delta import EarlierExport, FeatureHashes, feature_hash
from mistudio_export.peers import FeatureFilter, FeatureRecord, FeatureRecords
from mistudio_export.records import ExplanationRecord
from mistudio_export.runtime import JobRuntime
from mistudio_export.selection import StatisticFilter
from mistudio_export.staged import StagedChunk, chunk_path, hashes_path, read_hashes, write_chunk


@dataclass(frozen=True)
class Collected:
    """What the staged dashboards hold."""

    hashes: Mapping[int, str]
    """Content hash of every exported feature, by index (a ``FeatureHashes``)."""
    skipped_unchanged: int
    """Features a delta export left out because they did not change."""


class _Fetched(NamedTuple):
    """What the store holds of a batch of features."""

    wires: list[bytes]
    """Their dashboards as the store keeps them, in any order."""
    records: dict[int, FeatureRecord]
    explanations: dict[int, list[ExplanationRecord]]


def chunks(indices: Sequence[int], size: int) -> list[list[int]]:
    return [list(indices[i : i + size]) for i in range(0, len(indices), size)]


class Staging:
    """Stages the dashboards of every selected feature, batch by batch; resumes after the last
    saved batch. ``delta_base``: an earlier export whose unchanged features are left out (then
    none kept is no error)."""

    def __init__(
        self,
        job: JobRuntime,
        store: FeatureRecords,
        params: DashboardParams,
        candidates: Sequence[int],
        keep: StatisticFilter,
        delta_base: EarlierExport | None,
        batch_size: int,
    ) -> None:
        self._job, self._store, self._params = job, store, params
        self._keep, self._delta_base = keep, delta_base
        self._batches = chunks(candidates, batch_size)
        self.candidates = len(candidates)
        self._hashes: list[FeatureHashes] = []
        self._skipped = 0
        self._stream: Iterator[StagedChunk] | None = None

    def chunks(self, on_read: Callable[[int, str], None]) -> Iterator[StagedChunk]:
        """Every chunk as it is staged (those a run before staged first); ``on_read`` hears
        the candidates read so far after each batch. Taken once."""
        assert self._stream is None, "the chunks are staged once"
        self._stream = self._stage(on_read)
        return self._stream

    def result(self, on_read: Callable[[int, str], None]) -> Collected:
        """What the staged dashboards hold, once every batch is staged (here, if not yet)."""
        for _ in self._stream if self._stream is not None else self.chunks(on_read):
            pass
        return Collected(FeatureHashes.joined(self._hashes), self._skipped)

    def _stage(self, on_read: Callable[[int, str], None]) -> Iterator[StagedChunk]:
        job, batches = self._job, self._batches
        state = job.checkpoint.collect
        done, self._skipped = state.chunks_done, state.skipped_unchanged
        staged = [chunk_path(job.staging, n) for n in range(done)]
        if not all(p.exists() and hashes_path(p).exists() for p in staged):
            done, self._skipped, staged = 0, 0, []  # the staging folder was lost: start over
        on_read(sum(map(len, batches[:done])), "")
        for path in staged:
            hashes = read_hashes(path)
            self._hashes.append(FeatureHashes.of(hashes))
            yield StagedChunk(path, hashes)
        for n, fetched in enumerate(self._fetched(batches[done:]), done):
            wires, hashes, unchanged = self._kept(fetched)
            path = chunk_path(job.staging, n)
            write_chunk(path, wires, hashes)
            self._hashes.append(FeatureHashes.of(hashes))
            self._skipped += unchanged
            on_read(
                sum(map(len, batches[: n + 1])), f"read dashboards of batch {n + 1}/{len(batches)}"
            )
            state.chunks_done, state.skipped_unchanged = n + 1, self._skipped
            job.save()
            yield StagedChunk(path, hashes)
        if self._delta_base is None and not any(self._hashes):
            raise FailedPrecondition(
                "no selected feature passes the activation-frequency and max-activation filters",
                violations=[
                    ("config.selection", "widen min/max_frequency or lower min_max_activation")
                ],
                field="config.selection",
            )

    def _fetched(self, batches: Sequence[list[int]]) -> Iterator[_Fetched]:
        """What the store holds of each batch, in order, the next batch's read asked for while
        the caller stages this one: the store answers from its own process meanwhile (a batch
        waited 25 of its 35 ms on it), so the first range reaches the writers sooner."""
        with ThreadPoolExecutor(1, thread_name_prefix="staging-read") as ahead:
            reading: Future[_Fetched] | None = None
            for batch in batches:
                upcoming = ahead.submit(self._fetch, batch)
                if reading is not None:
                    yield reading.result()
                reading = upcoming
            if reading is not None:
                yield reading.result()

    def _fetch(self, batch: list[int]) -> _Fetched:
        store, plan = self._store, self._job.plan
        sae_id, owner = plan.sae.sae_id, plan.sae.owner
        found, missing = store.dashboards(sae_id, self._params, batch, owner)
        if missing:
            raise FailedPrecondition(
                f"{len(missing)} dashboards are missing from the cache after computing, e.g. "
                f"feature {missing[0]}",
                violations=[("dashboards", f"no cached dashboard for features {missing[:10]}")],
                fix="resume the export: the missing dashboards are computed again",
            )
        records = {
            f.feature_index: f
            for f in store.features(
                sae_id, FeatureFilter(index_start=batch[0], index_end=batch[-1] + 1), owner
            )
        }
        explanations: dict[int, list[ExplanationRecord]] = defaultdict(list)
        for e in store.explanations(sae_id, batch, owner):
            explanations[e.feature_index].append(e)
        return _Fetched(found, records, explanations)

    def _kept(self, fetched: _Fetched) -> tuple[list[bytes], dict[int, str], int]:
        """The kept dashboards of a batch in their wire form (the bytes the store keeps, for
        both the hash and the chunk), their hashes, and how many a delta export left out."""
        found, records, explanations = fetched
        wires: list[bytes] = []
        hashes: dict[int, str] = {}
        unchanged = 0
        parsed = sorted(
            zip(map(dpb.FeatureDashboardStatistics.FromString, found), found, strict=True),
            key=lambda pair: pair[0].feature_index,
        )
        for dashboard, wire in parsed:  # read for the filters; staged as the store keeps it
            index = dashboard.feature_index
            if not self._keep.keeps(dashboard):
                continue
            content = feature_hash(content_hash_of(wire), records.get(index), explanations[index])
            if self._delta_base is not None and self._delta_base.unchanged(index, content):
                unchanged += 1
                continue
            wires.append(wire)
            hashes[index] = content
        return wires, hashes, unchanged
