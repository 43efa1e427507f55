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

import itertools
import struct
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from queue import SimpleQueue
from typing import TypeAlias

from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio_common.dashboard_codec import dashboard_head_from_pb
from mistudio_common.errors import Cancelled, Unavailable
from mistudio_common.gc_pause import collector_paused

from mistudio_export import worker_pool
from mistudio_export.formats.bulk_json import StringTable
from mistudio_export.formats.columns import (
    ExampleColumns,
    batch_sized,
    example_columns,
    fan_out,
    wire_columns,
    wire_tokens,
)
from mistudio_export.formats.example_wire import TokenCodes
from mistudio_export.formats.neuronpedia_importer import (
    DEFAULT_BATCH_SIZE as IMPORTER_BATCH,
)
from mistudio_export.formats.neuronpedia_importer import write_importer_export
from mistudio_export.formats.prd_json import write_feature_files
from mistudio_export.formats.saedashboard_batch import write_saedashboard_batches
from mistudio_export.formats.upload_payloads import PayloadNotes, payload_features
from mistudio_export.packaging import FormatKind
from mistudio_export.records import ExplanationRecord, NeuronpediaNaming, SaeInfo
from mistudio_export.staged import StagedChunk, read_wires
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
    hashes: dict[int, str]
    """Content hashes of the features its chunks hold, by index: a PRD file is copied where the
    earlier archive's feature had the same."""

    @property
    def indices(self) -> tuple[int, ...]:
        """The features its chunks hold, ascending."""
        return tuple(sorted(self.hashes))


def feature_ranges(
    chunks: Iterable[StagedChunk], features_per_batch: int
) -> Iterator[FeatureRange]:
    """The chunks in ranges of about ``RANGE_FEATURES``, each as soon as the chunk after its
    cut is staged (the last once every chunk is); always at least one."""
    paths: list[Path] = []
    hashes: dict[int, str] = {}
    last = -1  # the range's last feature so far
    position = 0
    for chunk in chunks:
        held = sorted(chunk.hashes)
        cut = (
            len(hashes) >= RANGE_FEATURES
            and held
            and position % features_per_batch == 0
            and held[0] // IMPORTER_BATCH != last // IMPORTER_BATCH
        )
        if cut:
            yield FeatureRange(tuple(paths), position - len(hashes), hashes)
            paths, hashes = [], {}
        paths.append(chunk.path)
        hashes.update((i, chunk.hashes[i]) for i in held)
        last = held[-1] if held else last
        position += len(held)
    yield FeatureRange(tuple(paths), position - len(hashes), hashes)


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
        if earlier_hashes.get(index) != task.range.hashes.get(index) or name not in names:
            return None
        written.copied += 1
        return earlier.read(name)

    return reuse


def _batches(chunks: Sequence[Path], found: list[ColumnFinding]) -> Iterator[ExampleColumns]:
    """The dashboards of ``chunks`` as column batches: the examples decoded from their bytes
    at once (or, laid out otherwise, read through the message classes), the rest converted
    for the formats' per-feature fields. Each batch is checked as it is made, and what
    ``column_checks`` finds is added to ``found``."""
    codes = TokenCodes(StringTable())
    for wires in batch_sized(read_wires(chunks), wire_tokens):
        splits = list(map(dpb.FeatureDashboardSplit.FromString, wires))
        heads = list(map(dashboard_head_from_pb, splits))
        batch = wire_columns(heads, codes, splits)
        if batch is None:  # laid out otherwise: read through the message classes
            messages = list(map(dpb.FeatureDashboard.FromString, wires))
            batch = example_columns(heads, codes.table, examples=messages)
        found += column_findings(batch)
        yield batch


def _write_parts(path: Path, features: Iterator[bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for feature in features:
            f.write(_LENGTH.pack(len(feature)) + feature)


def payloads_path(parts: Path, number: int) -> Path:
    """Where range ``number`` leaves its serialised upload features."""
    return parts / f"range-{number:06d}.bin"


Finished: TypeAlias = SimpleQueue[tuple[int, RangeWritten] | int | None]
"""Each range's number and result as it is written, in any order; then the number of ranges
once every one is written, or None once the writing stopped."""


def payload_parts(parts: Path, finished: Finished, notes: PayloadNotes) -> Iterator[bytes]:
    """The serialised upload features the ranges wrote under ``parts``, in feature order, each
    range's as soon as ``finished`` has handed over it and the ranges before it; their notes go
    to ``notes``, all of them by the end."""
    arrived: dict[int, RangeWritten] = {}
    for number in itertools.count():
        while number not in arrived:
            item = finished.get()
            if item is None:
                raise Cancelled(
                    f"the ranges stopped before range {number}'s upload features were written",
                    fix="resume the export",
                )
            if isinstance(item, int):  # every range's result came before it
                return
            arrived[item[0]] = item[1]
        notes.extend(arrived.pop(number).payload_notes)
        data = payloads_path(parts, number).read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = _LENGTH.unpack_from(data, offset)
            offset += _LENGTH.size
            yield data[offset : offset + length]
            offset += length


def run_ranges(
    tasks: Iterable[RangeTask],
    *,
    pool: WorkerPool | None,
    check: Callable[[], None],
    progress: Callable[[int], None],
    finished: Finished,
) -> list[RangeWritten]:
    """Writes every task's range, in ``pool``'s processes when one is given, each as soon as
    ``tasks`` hands it over (the dashboards of later ranges may still be staged meanwhile);
    ``progress`` hears the features written (per feature here, every ``REPORT_EVERY`` from each
    of the pool's processes), ``finished`` gets each range's result as it ends, ``check``
    raises to stop (cancel, pause), which ends the pool's processes too."""
    try:
        if pool is not None:
            results = _in_pool(pool, tasks, check, progress, finished)
        else:
            results = []
            before = 0
            for number, task in enumerate(tasks):

                def within(n: int, at: int = before) -> None:
                    progress(at + n)

                results.append(write_range(task, within))
                finished.put((number, results[-1]))
                before += len(task.range.hashes)
                progress(before)
                check()
    except BaseException:
        finished.put(None)
        raise
    finished.put(len(results))
    return results


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
    tasks: Iterable[RangeTask],
    check: Callable[[], None],
    progress: Callable[[int], None],
    finished: Finished,
) -> list[RangeWritten]:
    by_task: list[int] = []
    futures: list[Future[RangeWritten]] = []
    numbers: dict[Future[RangeWritten], int] = {}

    def heard(pending: set[Future[RangeWritten]], timeout: float) -> set[Future[RangeWritten]]:
        ended, pending = wait(pending, timeout=timeout, return_when=FIRST_COMPLETED)
        for future in ended:
            finished.put((numbers[future], future.result()))  # a worker's error: raised
        # a finished range's counts were in the pipe before its result: all read here
        while not lease.messages.empty():
            number, n = lease.messages.get()
            by_task[number] = max(by_task[number], n)
            progress(sum(by_task))
        return pending

    try:
        with pool.lease() as lease:  # a stop request or an error raised here ends its processes
            pending: set[Future[RangeWritten]] = set()
            for task in tasks:  # staging the next ranges' dashboards while these are written
                future = lease.submit(_write_counted, len(futures), task)
                numbers[future] = len(futures)
                futures.append(future)
                by_task.append(0)
                pending = heard({*pending, future}, timeout=0)
                check()
            while pending:
                pending = heard(pending, timeout=0.5)
                check()
    except BrokenProcessPool:
        raise Unavailable(
            "a process writing the Neuronpedia formats exited without finishing",
            fix="resume the export; if it happens again, check the memory available",
        ) from None
    return [f.result() for f in futures]
