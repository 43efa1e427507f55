"""Writing every requested format from the staged dashboards into the archive folder.

Layout of ``staging/out`` (the future archive root): the PRD layout at the root (metadata.json,
features/, explanations/), then one folder per other format: ``neuronpedia-importer/``,
``saedashboard/``, ``upload-payloads/``, ``saelens/``, ``preview/`` (the viewer, which reads the
PRD layout written before it). Each format is one checkpoint; the PRD
feature files of features unchanged since an earlier archive with the same rendering options
are copied from it rather than regenerated. The Neuronpedia formats are written together, from
one read of the staged dashboards as column batches (``formats.columns``), over ranges of
features that a large export spreads over a pool of processes (``feature_ranges``), each range
as soon as its dashboards are staged (``collect``): the processes write while the export's own
process still reads the later ones from the store.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable, Container, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from queue import SimpleQueue
from typing import NamedTuple

import orjson
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio_common.errors import Unavailable
from mistudio_common.gc_pause import collector_paused

from mistudio_export import feature_ranges as ranges_module
from mistudio_export.collect import Collected, Staging
from mistudio_export.feature_ranges import (
    REPORT_EVERY,
    FeatureRange,
    Finished,
    RangeTask,
    Reuse,
    feature_ranges,
    payload_parts,
    payloads_path,
    run_ranges,
)
from mistudio_export.formats import jsonio, prd_json
from mistudio_export.formats.upload_payloads import PayloadNotes, write_payload_bodies
from mistudio_export.packaging import FormatKind, IncludedFormat
from mistudio_export.peers import FeatureFacts, FeatureFilter, FileChunk, SaeLensFiles, SaeRecord
from mistudio_export.preview import PREVIEW_DIR, write_preview
from mistudio_export.records import ExplanationRecord, FeatureLabel, NeuronpediaNaming, SaeInfo
from mistudio_export.runtime import JobRuntime
from mistudio_export.staged import StagedChunk
from mistudio_export.validation.column_checks import ColumnFinding
from mistudio_export.validation.column_checks import features_to_walk as walk_of

__all__ = ["Reuse"]  # pipeline's name for it

ROOT = "/"
"""IncludedFormat folder meaning the archive root (where the PRD layout lives)."""
FOLDERS = {
    FormatKind.PRD_JSON: ROOT,
    FormatKind.NEURONPEDIA_IMPORT: "neuronpedia-importer",
    FormatKind.SAEDASHBOARD: "saedashboard",
    FormatKind.NEURONPEDIA_UPLOAD: "upload-payloads",
    FormatKind.SAELENS: "saelens",
    FormatKind.PREVIEW: PREVIEW_DIR,
}
NEURONPEDIA_KINDS = (
    FormatKind.PRD_JSON,
    FormatKind.NEURONPEDIA_IMPORT,
    FormatKind.SAEDASHBOARD,
    FormatKind.NEURONPEDIA_UPLOAD,
)
PARALLEL_MIN_FEATURES = 512
"""Below this many features a pool of processes costs more to start than it saves."""
READ_STEPS = 1
WRITE_STEPS = 3
"""A feature's steps in the file stage's count: its staged dashboard read, then each pass that
writes it (on the 4,096-feature bench export the reading was a quarter of the stage's time and
the one pass three quarters)."""


@dataclass(frozen=True)
class FileCount:
    """The file stage's one count, reading and then the passes over the features, each feature's
    step weighed by its share of the stage's time: the stage's own rate early on then predicts
    all of it. Counted apart, the reading's rate predicted the reading alone, and the writing's
    time was left out of the job's ETA until the writing began."""

    read: int
    """Features whose dashboards are read (staged) before the writing."""
    written: int
    """Features each pass writes."""
    passes: int

    UNIT = "feature steps"

    @property
    def total(self) -> int:
        return max(1, self.read * READ_STEPS + self.passes * self.written * WRITE_STEPS)

    def steps(self, read: int, position: int = 0, n: int = 0) -> int:
        """Steps done once ``read`` features are read and pass ``position`` has written ``n``
        (the first pass writes while the reading goes on)."""
        return read * READ_STEPS + (position * self.written + n) * WRITE_STEPS


@dataclass
class FileSteps:
    """The file stage's count as reported: the reading and the first pass go on together, so
    each one's report holds the other's steps too."""

    job: JobRuntime
    count: FileCount
    read: int = 0
    position: int = 0
    written: int = 0
    """Features pass ``position`` has written."""

    def reading(self, n: int, message: str) -> None:
        self.read = n
        self._report(message)

    def writer(self, position: int, kind: FormatKind) -> Callable[[int], None]:
        """Reports pass ``position``'s features written (``kind``'s), every ``REPORT_EVERY``."""
        reported = -REPORT_EVERY

        def report(n: int) -> None:
            nonlocal reported
            if n - reported >= REPORT_EVERY or n == self.count.written:
                reported = n
                self.position, self.written = position, n
                self._report(f"writing {kind.value}")
                self.job.check()

        return report

    def _report(self, message: str) -> None:
        count = self.count
        done = count.steps(self.read, self.position, self.written)
        self.job.report(ppb.STAGE_GENERATING_FILES, done, count.total, FileCount.UNIT, message)


@dataclass
class Inputs:
    """What every format writer reads."""

    info: SaeInfo
    explanations: list[ExplanationRecord]
    labels: list[FeatureLabel]
    reuse: Reuse | None
    saelens_frequencies: list[float]
    pretrained_yaml: str

    @property
    def neuronpedia_explanations(self) -> list[ExplanationRecord]:
        """Explanations and labels: Neuronpedia keeps a label as an explanation of no type."""
        return [*self.explanations, *(label.as_explanation() for label in self.labels)]

    def of(self, features: Container[int]) -> Inputs:
        """These inputs with the explanations and labels of ``features`` alone."""
        return dataclasses.replace(
            self,
            explanations=[e for e in self.explanations if e.feature_index in features],
            labels=[label for label in self.labels if label.feature_index in features],
        )


def output_dir(staging: Path) -> Path:
    return staging / "out"


def included_formats(kinds: Sequence[FormatKind]) -> tuple[IncludedFormat, ...]:
    return tuple(IncludedFormat(kind, FOLDERS[kind]) for kind in kinds)


def writing_passes(kinds: Sequence[FormatKind], done: Sequence[str]) -> list[FormatKind]:
    """The passes over the features that writing the formats of ``kinds`` not yet ``done``
    makes: the Neuronpedia formats are written in one, each other format but SAELENS in one of
    its own; the SAELENS files are the SAE's weights, streamed: no pass."""
    pending = [k for k in kinds if k.value not in done]
    first_neuronpedia = [k for k in pending if k in NEURONPEDIA_KINDS][:1]
    others = [k for k in pending if k not in NEURONPEDIA_KINDS and k is not FormatKind.SAELENS]
    return [*first_neuronpedia, *others]


class FilesWritten(NamedTuple):
    collected: Collected
    """What the staged dashboards hold."""
    copied: int
    """PRD files copied from an earlier archive."""


def write_formats(
    job: JobRuntime,
    kinds: Sequence[FormatKind],
    inputs: Inputs,
    compute: SaeLensFiles,
    features_per_batch: int,
    staging: Staging | None,
) -> FilesWritten:
    """Writes each format not yet checkpointed, the Neuronpedia ones from the dashboards that
    ``staging`` reads while it reads them (when the plan has them)."""
    state = job.checkpoint.formats
    done = list(state.done)
    out = output_dir(job.staging)
    unchanged = state.features_unchanged
    passes = writing_passes(kinds, done)
    read = staging.candidates if staging is not None else 0
    steps = FileSteps(job, FileCount(read=read, written=read, passes=len(passes)))
    together = [k for k in NEURONPEDIA_KINDS if k in kinds and k.value not in done]
    collected = Collected({}, 0)
    if staging is not None and not together:  # written before a restart
        collected = staging.result(steps.reading)
    with collector_paused():
        for kind in kinds:
            if kind.value in done:
                continue
            folder = out / FOLDERS[kind].strip("/") if FOLDERS[kind] != ROOT else out
            position = passes.index(kind) if kind in passes else len(passes)
            progress = steps.writer(position, kind)
            if kind in NEURONPEDIA_KINDS:  # reported as it goes, beside the reading
                assert staging is not None  # the plan has the Neuronpedia formats
                chunks = staging.chunks(steps.reading)
                pooled = in_pool(read) and read > ranges_module.RANGE_FEATURES  # > one range
                copied = _write_neuronpedia(
                    job, together, inputs, features_per_batch, progress, chunks, pooled
                )
                collected = staging.result(steps.reading)
                steps.count = dataclasses.replace(steps.count, written=len(collected.hashes))
                unchanged = copied if FormatKind.PRD_JSON in together else unchanged
                done += [k.value for k in together if k is not kind]
            elif kind is FormatKind.SAELENS:
                progress(0)
                _clear(folder)
                _write_saelens(job, folder, inputs, compute)
            elif kind is FormatKind.PREVIEW:
                progress(0)
                _clear(folder)
                write_preview(out, folder, progress=progress)
            done.append(kind.value)
            state.done[:] = done
            state.features_unchanged = unchanged
            job.save()
    return FilesWritten(collected, unchanged)


def in_pool(n_features: int) -> bool:
    """Whether the ranges of ``n_features`` are written in a pool of processes."""
    return n_features >= PARALLEL_MIN_FEATURES and (os.cpu_count() or 1) >= 2


def _write_neuronpedia(
    job: JobRuntime,
    kinds: Sequence[FormatKind],
    inputs: Inputs,
    features_per_batch: int,
    progress: Callable[[int], None],
    chunks: Iterator[StagedChunk],
    pooled: bool,
) -> int:
    """Writes the Neuronpedia ``kinds`` from one read of the staged dashboards, range by
    range, each range as soon as its chunks are staged (in the pool's processes when
    ``pooled``); returns how many PRD files were copied from an earlier archive."""
    info, naming = inputs.info, job.plan.naming
    info.validate()
    naming.validate()
    out = output_dir(job.staging)
    folders = {k: out if FOLDERS[k] == ROOT else out / FOLDERS[k] for k in kinds}
    for kind, folder in folders.items():
        if kind is FormatKind.PRD_JSON:
            shutil.rmtree(out / prd_json.FEATURES_DIR, ignore_errors=True)
        else:
            _clear(folder)
    parts = job.staging / "work" / "upload-parts"
    shutil.rmtree(parts, ignore_errors=True)
    ranges: list[FeatureRange] = []
    cut = feature_ranges(chunks, features_per_batch)
    tasks = _tasks(cut, ranges, folders, inputs, features_per_batch, job, parts)
    finished: Finished = SimpleQueue()
    with ThreadPoolExecutor(1, thread_name_prefix=f"bodies-{job.job_id[:8]}") as aside:
        # packed beside the ranges, each range's features once it and those before it are
        # written: after the last range, only its own are left to pack
        bodies = (
            aside.submit(
                _write_bodies, folders[FormatKind.NEURONPEDIA_UPLOAD], naming, parts, finished
            )
            if FormatKind.NEURONPEDIA_UPLOAD in folders
            else None
        )
        written = run_ranges(
            tasks,
            pool=job.workers if pooled else None,
            check=job.check,
            progress=progress,
            finished=finished,
        )
        if bodies is not None:
            bodies.result()
    _record_findings(job.staging, [f for w in written for f in w.findings])
    if FormatKind.PRD_JSON in folders:
        kept = inputs.of({i for r in ranges for i in r.hashes})
        n = sum(len(r.hashes) for r in ranges)
        compress = job.plan.gzip_json
        prd_json.write_prd_documents(out, info, naming, kept.explanations, kept.labels, n, compress)
    shutil.rmtree(parts, ignore_errors=True)
    return sum(w.copied for w in written)


def _write_bodies(folder: Path, naming: NeuronpediaNaming, parts: Path, finished: Finished) -> None:
    notes = PayloadNotes()
    write_payload_bodies(folder, naming, payload_parts(parts, finished, notes), notes)


def _tasks(
    ranges: Iterable[FeatureRange],
    seen: list[FeatureRange],
    folders: dict[FormatKind, Path],
    inputs: Inputs,
    features_per_batch: int,
    job: JobRuntime,
    parts: Path,
) -> Iterator[RangeTask]:
    """A task per range as ``ranges`` cuts it, each range added to ``seen``."""
    by_feature: dict[int, list[ExplanationRecord]] = {}
    for record in inputs.neuronpedia_explanations:
        by_feature.setdefault(record.feature_index, []).append(record)
    earlier = inputs.reuse
    for n, r in enumerate(ranges):
        seen.append(r)
        yield RangeTask(
            range=r,
            folders=folders,
            info=inputs.info,
            naming=job.plan.naming,
            explanations=tuple(e for i in r.indices for e in by_feature.get(i, ())),
            features_per_batch=features_per_batch,
            compress_features=job.plan.gzip_json,
            reuse=None
            if earlier is None
            else Reuse(earlier.archive, _of(earlier.hashes, r.indices)),
            payloads=payloads_path(parts, n),
        )


def _of(hashes: Mapping[int, str], indices: Sequence[int]) -> dict[int, str]:
    return {i: hashes[i] for i in indices if i in hashes}


COLUMN_FINDINGS = "column-findings.json"
"""In the staging folder: what ``column_checks`` found in the batches the formats were written
from, read by the validating stage (``features_to_walk``)."""
MAX_FINDINGS_SHOWN = 100
"""The file shows the first findings; the full check reports them all."""


def _record_findings(staging: Path, findings: list[ColumnFinding]) -> None:
    """Written atomically: a resumed job's read may replace an earlier one's record."""
    walk = walk_of(findings)
    record = {
        "walk_everything": walk is None,
        "prd_features_to_walk": sorted(walk or ()),
        "findings": [dataclasses.asdict(f) for f in findings[:MAX_FINDINGS_SHOWN]],
    }
    jsonio.write_document(staging / COLUMN_FINDINGS, jsonio.dumps_plain(record))


def features_to_walk(staging: Path) -> frozenset[int] | None:
    """The features whose PRD files need the validator's full check, when the staged dashboards
    were read into checked column batches; None when every file needs it (no record, or a
    finding that other formats' checks report too)."""
    try:
        record = orjson.loads(jsonio.read_bytes(staging / COLUMN_FINDINGS))
    except FileNotFoundError:
        return None
    return None if record["walk_everything"] else frozenset(record["prd_features_to_walk"])


def _clear(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)


def _write_saelens(job: JobRuntime, folder: Path, inputs: Inputs, compute: SaeLensFiles) -> None:
    plan = job.plan
    chunks = iter(
        compute.saelens_files(plan.sae, plan.naming.neuronpedia_id, inputs.saelens_frequencies)
    )
    for first in chunks:  # the stream sends one file's chunks after another's
        jsonio.write_atomic_chunks(folder / first.file_name, _one_file(first, chunks))
        job.check()
    (folder / "pretrained_saes.yaml").write_text(inputs.pretrained_yaml, encoding="utf-8")


def _one_file(first: FileChunk, rest: Iterator[FileChunk]) -> Iterator[bytes]:
    """The bytes of ``first``'s file, read from ``rest`` up to its last chunk: written as they
    come, so the weights (which grow with d_sae) are never held whole."""
    chunk = first
    while True:
        yield chunk.data
        if chunk.last:
            return
        following = next(rest, None)
        if following is None or following.file_name != first.file_name:
            raise Unavailable(
                f"the compute service's stream of {first.file_name} broke off before its end",
                fix="resume the export",
            )
        chunk = following


def explanation_records(
    store: FeatureFacts, sae: SaeRecord, indices: Sequence[int]
) -> list[ExplanationRecord]:
    """The store's explanations of ``indices`` as the formats take them."""
    if not indices:
        return []
    wanted = set(indices)
    return [
        e
        for e in store.explanations(sae.sae_id, list(indices), sae.owner)
        if e.feature_index in wanted
    ]


def feature_labels(
    store: FeatureFacts, sae: SaeRecord, indices: Sequence[int]
) -> list[FeatureLabel]:
    """The labels of ``indices`` that have one."""
    wanted = set(indices)
    return [
        FeatureLabel(f.feature_index, f.label, f.category, f.updated_at)
        for f in store.features(sae.sae_id, FeatureFilter(labeled_only=True), sae.owner)
        if f.feature_index in wanted and f.label.strip()
    ]


def saelens_frequencies(store: FeatureFacts, sae: SaeRecord) -> list[float]:
    """Every feature's activation frequency when the store has all of them; else empty."""
    d_sae = sae.d_sae
    frequencies = {
        f.feature_index: f.activation_frequency
        for f in store.features(sae.sae_id, FeatureFilter(), sae.owner)
    }
    if len(frequencies) != d_sae or set(frequencies) != set(range(d_sae)):
        return []
    return [frequencies[i] for i in range(d_sae)]
