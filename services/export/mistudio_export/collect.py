"""Reading the selected features' dashboards from the cache into the job's staging folder.

Features are read in batches in index order; each batch is filtered by the statistic filters,
hashed, written to ``staging/work/dashboards/chunk-N.bin`` (its hashes beside it, in
``chunk-N.hashes.json``) and checkpointed, so a resumed job continues with the next batch. The
checkpoint holds only the batch count: with a hash per feature in it, every save rewrote all
hashes so far, quadratic in the feature count. Every later step reads the staged copy, never
the store again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio_common.dashboard import DashboardParams
from mistudio_common.errors import FailedPrecondition

from mistudio_export.delta import EarlierExport, FeatureHashes, feature_hash
from mistudio_export.generate import FileCount
from mistudio_export.peers import FeatureFilter, FeatureRecords
from mistudio_export.records import ExplanationRecord
from mistudio_export.runtime import JobRuntime
from mistudio_export.selection import StatisticFilter
from mistudio_export.staged import chunk_path, hashes_path, read_hashes, write_chunk


@dataclass(frozen=True)
class Collected:
    """What the staged dashboards hold."""

    hashes: Mapping[int, str]
    """Content hash of every exported feature, by index (a ``FeatureHashes``)."""
    skipped_unchanged: int
    """Features a delta export left out because they did not change."""


def chunks(indices: Sequence[int], size: int) -> list[list[int]]:
    return [list(indices[i : i + size]) for i in range(0, len(indices), size)]


def collect(
    job: JobRuntime,
    store: FeatureRecords,
    params: DashboardParams,
    candidates: Sequence[int],
    keep: StatisticFilter,
    delta_base: EarlierExport | None,
    batch_size: int,
    count: FileCount | None = None,
) -> Collected:
    """Stages the dashboards of every selected feature; resumes after the last saved batch.
    Reported on ``count``, the file stage's count that the writing goes on with (alone, the
    reading's own)."""
    count = count or FileCount(read=len(candidates), written=0, passes=0)
    state = job.checkpoint.collect
    done, skipped = state.chunks_done, state.skipped_unchanged
    batches = chunks(candidates, batch_size)
    staged = [chunk_path(job.staging, n) for n in range(done)]
    if all(p.exists() and hashes_path(p).exists() for p in staged):
        hashes = [FeatureHashes.of(read_hashes(p)) for p in staged]
    else:
        done, skipped, hashes = 0, 0, []  # the staging folder was lost: start this step over
    total, unit = count.total, FileCount.UNIT
    read = count.reading(sum(map(len, batches[:done])))
    job.report(ppb.STAGE_GENERATING_FILES, read, total, unit)
    for n in range(done, len(batches)):
        batch = batches[n]
        kept, batch_hashes, unchanged = _read_batch(job, store, params, batch, keep, delta_base)
        write_chunk(chunk_path(job.staging, n), kept, batch_hashes)
        hashes.append(FeatureHashes.of(batch_hashes))
        skipped += unchanged
        job.report(
            ppb.STAGE_GENERATING_FILES,
            count.reading(sum(map(len, batches[: n + 1]))),
            total,
            unit,
            f"read dashboards of batch {n + 1}/{len(batches)}",
        )
        state.chunks_done, state.skipped_unchanged = n + 1, skipped
        job.save()
    return Collected(hashes=FeatureHashes.joined(hashes), skipped_unchanged=skipped)


def _read_batch(
    job: JobRuntime,
    store: FeatureRecords,
    params: DashboardParams,
    batch: list[int],
    keep: StatisticFilter,
    delta_base: EarlierExport | None,
) -> tuple[list[dpb.FeatureDashboard], dict[int, str], int]:
    sae_id, owner = job.plan.sae.sae_id, job.plan.sae.owner
    found, missing = store.dashboards(sae_id, params, batch, owner)
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
    kept: list[dpb.FeatureDashboard] = []
    hashes: dict[int, str] = {}
    unchanged = 0
    for dashboard in sorted(found, key=lambda d: d.feature_index):
        index = dashboard.feature_index
        if not keep.keeps(dashboard):
            continue
        content = feature_hash(dashboard, records.get(index), explanations[index])
        if delta_base is not None and delta_base.unchanged(index, content):
            unchanged += 1
            continue
        kept.append(dashboard)
        hashes[index] = content
    return kept, hashes, unchanged
