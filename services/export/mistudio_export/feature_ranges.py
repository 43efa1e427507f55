"""The Neuronpedia formats written over ranges of the staged features, one task per range; on a
large export the tasks run in a pool of processes, one per core.

A range is a run of staged chunks cut where no file of any format spans the cut: an
SAEDashboard batch (``features_per_batch`` features in order) and an importer batch
(``feature_index // DEFAULT_BATCH_SIZE``) both begin there, so a range's files are numbered
from its first position and its indices alone. Upload request bodies are numbered by the
features the API takes (dead ones are skipped), which no range knows before it is read: a
range's task leaves its features serialised in a file, and ``payload_parts`` reads them back
in order, each range's once it and every range before it are written, for the bodies to be
packed while the later ranges are still being written. The bytes are those one writer reading
every feature in order would write, whatever the number of processes.
"""

from __future__ import annotations

import struct
import zipfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from queue import SimpleQueue
from typing import TypeAlias

from mistudio_common.dashboard_codec import dashboard_from_pb
from mistudio_common.errors import Cancelled, Unavailable
from mistudio_common.gc_pause import collector_paused

from mistudio_export import worker_pool
from mistudio_export.formats.bulk_json import StringTable
from mistudio_export.formats.columns import ExampleColumns, batch_sized, fan_out, view_columns
from mistudio_export.formats.neuronpedia_importer import (
    DEFAULT_BATCH_SIZE as IMPORTER_BATCH,
)
from mistudio_export.formats.neuronpedia_importer import write_importer_export
from mistudio_export.formats.prd_json import write_feature_files
from mistudio_export.formats.saedashboard_batch import write_saedashboard_batches
from mistudio_export.formats.upload_payloads import PayloadNotes, payload_features
from mistudio_export.packaging import FormatKind
from mistudio_export.records import ExplanationRecord, NeuronpediaNaming, SaeInfo
from mistudio_export.staged import chunk_indices, head, read_views, staged_chunks
from mistudio_export.validation.column_checks import ColumnFinding, column_findings
from mistudio_export.worker_pool import WorkerPool

RANGE_FEATURES = 1024
"""A range ends at the first cut after this many features (one importer batch): enough ranges
to keep every core busy to the end, each long enough that its start costs little."""
_LENGTH = struct.Struct(">I")


@dataclass(frozen=True)
class FeatureRange:
    chunks: tuple[Path, ...]
    first_position: int
    """Of its first feature among every staged feature."""
    indices: tuple[int, ...]
    """The features its chunks hold, ascending."""


def feature_ranges(staging: Path, features_per_batch: int) -> list[FeatureRange]:
    """The staged chunks in ranges of about ``RANGE_FEATURES``; always at least one."""
    ranges: list[FeatureRange] = []
    chunks: list[Path] = []
    indices: list[int] = []
    position = 0
    for chunk in staged_chunks(staging):
        held = chunk_indices(chunk)
        cut = (
            len(indices) >= RANGE_FEATURES
            and held
            and position % features_per_batch == 0
            and held[0] // IMPORTER_BATCH != indices[-1] // IMPORTER_BATCH
        )
        if cut:
            ranges.append(FeatureRange(tuple(chunks), position - len(indices), tuple(indices)))
            chunks, indices = [], []
        chunks.append(chunk)
        indices += held
        position += len(held)
    ranges.append(FeatureRange(tuple(chunks), position - len(indices), tuple(indices)))
    return ranges


@dataclass(frozen=True)
class Reuse:
    """An earlier archive (downloaded) and the hashes of the features it holds."""

    archive: Path
    hashes: dict[int, str]


@dataclass(frozen=True)
class RangeTask:
    """What writing one range takes; sent to a worker process."""

    range: FeatureRange
    folders: dict[FormatKind, Path]
    """The formats to write, each into its folder."""
    info: SaeInfo
    naming: NeuronpediaNaming
    explanations: tuple[ExplanationRecord, ...]
    """Neuronpedia's explanations (labels included) of the range's features."""
    features_per_batch: int
    compress_features: bool
    hashes: dict[int, str]
    """Of the range's features now: a PRD file is copied where the earlier one's is equal."""
    reuse: Reuse | None
    payloads: Path
    """Where the range's serialised upload features go."""


@dataclass
class RangeWritten:
    findings: list[ColumnFinding] = field(default_factory=list)
    """What ``column_checks`` found in the range's batches."""
    copied: int = 0
    """PRD files copied from the earlier archive."""
    payload_notes: PayloadNotes = field(default_factory=PayloadNotes)


def write_range(task: RangeTask, progress: Callable[[int], None] | None = None) -> RangeWritten:
    """Writes every format of ``task.folders`` for the range's features."""
    written = RangeWritten()
    folders, info, naming = task.folders, task.info, task.naming
    first = task.range.first_position
    writers: list[Callable[[Iterator[ExampleColumns]], object]] = []
    with ExitStack() as stack:
        stack.enter_context(collector_paused())
        if FormatKind.PRD_JSON in folders:
            reuse = _reuse(stack, task, written)
            writers.append(
                lambda batches: write_feature_files(
                    folders[FormatKind.PRD_JSON],
                    batches,
                    compress_features=task.compress_features,
                    progress=progress,
                    reuse=reuse,
                )
            )
        if FormatKind.SAEDASHBOARD in folders:
            fpb = task.features_per_batch
            writers.append(
                lambda batches: write_saedashboard_batches(
                    folders[FormatKind.SAEDASHBOARD],
                    info,
                    naming,
                    batches,
                    features_per_batch=fpb,
                    first_batch=first // fpb,
                )
            )
        if FormatKind.NEURONPEDIA_IMPORT in folders:
            writers.append(
                lambda batches: write_importer_export(
                    folders[FormatKind.NEURONPEDIA_IMPORT],
                    info,
                    naming,
                    batches,
                    task.explanations,
                    source_rows=first == 0,
                )
            )
        if FormatKind.NEURONPEDIA_UPLOAD in folders:
            notes = written.payload_notes
            writers.append(
                lambda batches: _write_parts(
                    task.payloads, payload_features(batches, task.explanations, notes)
                )
            )
        fan_out(_batches(task.range.chunks, written.findings), writers)
    return written


def _reuse(
    stack: ExitStack, task: RangeTask, written: RangeWritten
) -> Callable[[int, str], bytes | None] | None:
    if task.reuse is None:
        return None
    earlier = stack.enter_context(zipfile.ZipFile(task.reuse.archive))
    names = set(earlier.namelist())
    earlier_hashes = task.reuse.hashes

    def reuse(index: int, name: str) -> bytes | None:
        if earlier_hashes.get(index) != task.hashes.get(index) or name not in names:
            return None
        written.copied += 1
        return earlier.read(name)

    return reuse


def _batches(chunks: Sequence[Path], found: list[ColumnFinding]) -> Iterator[ExampleColumns]:
    """The dashboards of ``chunks`` as column batches: the examples read straight from the
    messages' read views into the columns, the rest converted for the formats' per-feature
    fields. Each batch is checked as it is made, and what ``column_checks`` finds is added to
    ``found``."""
    tokens = StringTable()
    for chunk in batch_sized(read_views(chunks)):
        heads = [dashboard_from_pb(head(v)) for v in chunk]
        batch = view_columns(heads, tokens, chunk)
        found += column_findings(batch)
        yield batch


def _write_parts(path: Path, features: Iterator[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for feature in features:
            f.write(_LENGTH.pack(len(feature)) + feature)


Finished: TypeAlias = SimpleQueue[tuple[int, RangeWritten] | None]
"""Each range's number and result as it is written, in any order; then None, once the writing
has ended or stopped."""


def payload_parts(
    tasks: Sequence[RangeTask], finished: Finished, notes: PayloadNotes
) -> Iterator[bytes]:
    """The serialised upload features the tasks wrote, in feature order, each range's as soon as
    ``finished`` has handed over it and the ranges before it; their notes go to ``notes``, all
    of them by the end."""
    arrived: dict[int, RangeWritten] = {}
    for number, task in enumerate(tasks):
        while number not in arrived:
            item = finished.get()
            if item is None:
                raise Cancelled(
                    f"the ranges stopped before range {number}'s upload features were written",
                    fix="resume the export",
                )
            arrived[item[0]] = item[1]
        notes.extend(arrived.pop(number).payload_notes)
        data = task.payloads.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = _LENGTH.unpack_from(data, offset)
            offset += _LENGTH.size
            yield data[offset : offset + length]
            offset += length


def run_ranges(
    tasks: Sequence[RangeTask],
    *,
    pool: WorkerPool | None,
    check: Callable[[], None],
    progress: Callable[[int], None],
    finished: Finished,
) -> list[RangeWritten]:
    """Writes every task's range, in ``pool``'s processes when one is given; ``progress`` hears
    the features written (per feature here, every ``REPORT_EVERY`` from each of the pool's
    processes), ``finished`` gets each range's result as it ends, ``check`` raises to stop
    (cancel, pause), which ends the pool's processes too."""
    try:
        if pool is not None:
            return _in_pool(pool, tasks, check, progress, finished)
        results = []
        before = 0
        for number, task in enumerate(tasks):

            def within(n: int, at: int = before) -> None:
                progress(at + n)

            results.append(write_range(task, within))
            finished.put((number, results[-1]))
            before += len(task.range.indices)
            progress(before)
            check()
        return results
    finally:
        finished.put(None)


REPORT_EVERY = 32
"""Features a pool's process writes between reports of its count."""


def _write_counted(number: int, task: RangeTask) -> RangeWritten:
    """``write_range`` in a pool's process, reporting its count (task number, features of its
    range written) as it goes: the ranges run side by side and end close together, so their
    ends alone would make the stage's early rate (from the first range's end to the next
    one's) far faster than its time."""
    sent = 0

    def report(n: int) -> None:
        nonlocal sent
        if n - sent >= REPORT_EVERY:
            worker_pool.send((number, n))
            sent = n

    written = write_range(task, report)
    worker_pool.send((number, len(task.range.indices)))
    return written


def _in_pool(
    pool: WorkerPool,
    tasks: Sequence[RangeTask],
    check: Callable[[], None],
    progress: Callable[[int], None],
    finished: Finished,
) -> list[RangeWritten]:
    by_task = [0] * len(tasks)
    try:
        with pool.lease() as lease:  # a stop request or an error raised here ends its processes
            futures: list[Future[RangeWritten]] = [
                lease.submit(_write_counted, n, t) for n, t in enumerate(tasks)
            ]
            numbers = {future: n for n, future in enumerate(futures)}
            pending = set(futures)
            while pending:
                ended, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                for future in ended:
                    finished.put((numbers[future], future.result()))  # a worker's error: raised
                # a finished range's counts were in the pipe before its result: all read here
                while not lease.messages.empty():
                    number, n = lease.messages.get()
                    by_task[number] = max(by_task[number], n)
                    progress(sum(by_task))
                check()
    except BrokenProcessPool:
        raise Unavailable(
            "a process writing the Neuronpedia formats exited without finishing",
            fix="resume the export; if it happens again, check the memory available",
        ) from None
    return [f.result() for f in futures]
