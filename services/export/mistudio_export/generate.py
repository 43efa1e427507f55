"""Writing every requested format from the staged dashboards into the archive folder.

Layout of ``staging/out`` (the future archive root): the PRD layout at the root (metadata.json,
features/, explanations/), then one folder per other format: ``neuronpedia-importer/``,
``saedashboard/``, ``upload-payloads/``, ``saelens/``, ``preview/`` (the viewer, which reads the
PRD layout written before it). Each format is one checkpoint; the PRD
feature files of features unchanged since an earlier archive with the same rendering options
are copied from it rather than regenerated. The staged dashboards are read as column batches
(``formats.columns``); the other Neuronpedia formats are written from the same read as the PRD
files. On a large export a second (spawned) process writes the importer rows and the upload
payloads meanwhile, so both CPU cores are used.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import shutil
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import orjson
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio_common.dashboard_codec import dashboard_from_pb
from mistudio_common.errors import Unavailable

from mistudio_export.collect import staged_dashboards
from mistudio_export.formats import jsonio, prd_json
from mistudio_export.formats.bulk_json import StringTable
from mistudio_export.formats.columns import (
    ExampleColumns,
    batch_sized,
    example_columns,
    fan_out,
)
from mistudio_export.formats.neuronpedia_importer import write_importer_export
from mistudio_export.formats.saedashboard_batch import write_saedashboard_batches
from mistudio_export.formats.upload_payloads import write_upload_payloads
from mistudio_export.gc_pause import collector_paused
from mistudio_export.packaging import FormatKind, IncludedFormat
from mistudio_export.peers import FeatureFacts, FeatureFilter, FileChunk, SaeLensFiles
from mistudio_export.preview import PREVIEW_DIR, write_preview
from mistudio_export.records import ExplanationRecord, FeatureLabel, NeuronpediaNaming, SaeInfo
from mistudio_export.runtime import JobRuntime
from mistudio_export.validation.column_checks import ColumnFinding, column_findings
from mistudio_export.validation.column_checks import features_to_walk as walk_of

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
ASIDE_KINDS = (FormatKind.NEURONPEDIA_IMPORT, FormatKind.NEURONPEDIA_UPLOAD)
"""Written by a second process, from its own read of the staged dashboards, while this one
writes the PRD layout and the others. CPU seconds on the 4096-feature bench export: reading
3.4 (each process), PRD 4.5, SAEDashboard 1.9, upload payloads 1.0, importer rows 3.9 (an id
hashed per example, every batch gzipped); so the importer and the payloads go aside."""
ALONG_PRD = (
    FormatKind.NEURONPEDIA_IMPORT,
    FormatKind.SAEDASHBOARD,
    FormatKind.NEURONPEDIA_UPLOAD,
)
"""Written from the same read of the staged dashboards as the PRD layout, unless aside."""
PARALLEL_MIN_FEATURES = 512
"""Below this many features a second process costs more to start than it saves."""


@dataclass(frozen=True)
class Reuse:
    """An earlier archive (downloaded) and the hashes of the features it holds."""

    archive: Path
    hashes: dict[int, str]


@dataclass
class Inputs:
    """What every format writer reads."""

    info: SaeInfo
    hashes: Mapping[int, str]
    explanations: list[ExplanationRecord]
    labels: list[FeatureLabel]
    reuse: Reuse | None
    saelens_frequencies: list[float]
    pretrained_yaml: str

    @property
    def neuronpedia_explanations(self) -> list[ExplanationRecord]:
        """Explanations and labels: Neuronpedia keeps a label as an explanation of no type."""
        return [*self.explanations, *(label.as_explanation() for label in self.labels)]


def output_dir(staging: Path) -> Path:
    return staging / "out"


def included_formats(kinds: Sequence[FormatKind]) -> tuple[IncludedFormat, ...]:
    return tuple(IncludedFormat(kind, FOLDERS[kind]) for kind in kinds)


def write_formats(
    job: JobRuntime,
    kinds: Sequence[FormatKind],
    inputs: Inputs,
    compute: SaeLensFiles,
    features_per_batch: int,
) -> int:
    """Writes each format not yet checkpointed; returns how many PRD files were copied."""
    state = job.checkpoint.formats
    done = list(state.done)
    out = output_dir(job.staging)
    n_features = len(inputs.hashes)
    unchanged = state.features_unchanged
    pending = [k for k in kinds if k.value not in done]
    aside = _aside(pending, n_features)
    along = [k for k in ALONG_PRD if k in pending and k not in aside]
    if FormatKind.PRD_JSON not in pending:
        along = []
    # The SAELENS files are the SAE's weights, streamed: no pass over the features.
    passes = [k for k in pending if k not in (*aside, *along, FormatKind.SAELENS)]

    def begin(kind: FormatKind) -> Callable[[int], None]:
        position = passes.index(kind) if kind in passes else len(passes)
        report = _progress(job, position, len(passes), n_features, kind)
        report(0)
        return report

    with ExitStack() as stack:
        stack.enter_context(collector_paused())
        side = None
        if aside:
            side = _start_aside(
                stack, (job.staging, aside, job.plan.naming, inputs, features_per_batch)
            )
        for kind in kinds:
            if kind.value in done:
                continue
            folder = out / FOLDERS[kind].strip("/") if FOLDERS[kind] != ROOT else out
            if side is not None and kind in aside:
                _wait(job, side)  # written meanwhile: no pass of this process's count
            elif kind is FormatKind.PRD_JSON:
                progress = begin(kind)
                unchanged = _write_prd(job, out, inputs, progress, features_per_batch, along)
                done += [k.value for k in along]
            elif kind is FormatKind.SAELENS:
                begin(kind)
                _clear(folder)
                _write_saelens(job, folder, inputs, compute)
            elif kind is FormatKind.PREVIEW:
                _clear(folder)
                write_preview(out, folder, progress=begin(kind))
            else:
                _clear(folder)
                naming = job.plan.naming
                _write_other(job.staging, kind, naming, inputs, features_per_batch, begin(kind))
            done.append(kind.value)
            state.done[:] = done
            state.features_unchanged = unchanged
            job.save()
    return unchanged


def _aside(pending: list[FormatKind], n_features: int) -> tuple[FormatKind, ...]:
    """The pending formats a second process writes; none when this one would sit idle."""
    aside = tuple(k for k in pending if k in ASIDE_KINDS)
    if n_features < PARALLEL_MIN_FEATURES or (os.cpu_count() or 1) < 2:
        return ()
    return aside if len(aside) < len(pending) else ()


@dataclass
class _Aside:
    process: multiprocessing.process.BaseProcess
    outcome: Connection
    """Receives None when the formats are written, else the error that stopped the process."""
    finished: bool = False


def _start_aside(stack: ExitStack, args: tuple[Any, ...]) -> _Aside:
    """Starts the second process; leaving ``stack`` kills it if it is still running."""
    # spawn, not fork: this process runs gRPC threads, which fork would copy mid-call
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_write_aside, args=(send, *args), daemon=True)
    process.start()
    send.close()
    stack.callback(_stop, process)
    return _Aside(process, receive)


def _stop(process: multiprocessing.process.BaseProcess) -> None:
    if process.is_alive():
        process.terminate()
    process.join()


def _wait(job: JobRuntime, side: _Aside) -> None:
    """Waits for the second process, still answering cancel and pause; re-raises its error."""
    if side.finished:
        return
    while not side.outcome.poll(0.5):
        job.check()
    try:
        error = side.outcome.recv()
    except EOFError:  # it died without a word: killed, or out of memory
        side.process.join()
        raise Unavailable(
            f"the process writing the Neuronpedia importer rows and upload payloads exited "
            f"(code {side.process.exitcode}) without finishing",
            fix="resume the export; if it happens again, check the memory available",
        ) from None
    if error is not None:
        raise error
    side.finished = True


def _write_aside(
    outcome: Connection,
    staging: Path,
    kinds: Sequence[FormatKind],
    naming: NeuronpediaNaming,
    inputs: Inputs,
    features_per_batch: int,
) -> None:
    def writer(kind: FormatKind) -> Callable[[Iterator[ExampleColumns]], None]:
        def write(batches: Iterator[ExampleColumns]) -> None:
            _clear(output_dir(staging) / FOLDERS[kind])
            _write_other(staging, kind, naming, inputs, features_per_batch, None, batches)

        return write

    try:
        with collector_paused():
            # One read for every format aside; its findings are this process's to record.
            fan_out(_batches(staging, findings=False), [writer(kind) for kind in kinds])
    except Exception as error:
        outcome.send(error)
    else:
        outcome.send(None)


def _progress(
    job: JobRuntime, position: int, n_passes: int, n_features: int, kind: FormatKind
) -> Callable[[int], None]:
    """Reports ``kind``'s features written as one count over the passes this process makes
    over the features (the PRD pass writes the formats along it; the second process's formats
    are written meanwhile and take none), so the stage's fraction follows its time."""
    total = max(1, n_passes * n_features)

    def report(n: int) -> None:
        if n % 32 == 0 or n == n_features:
            job.report(
                ppb.STAGE_GENERATING_FILES,
                position * n_features + n,
                total,
                "features",
                f"writing {kind.value}",
            )
            job.check()

    return report


COLUMN_FINDINGS = "column-findings.json"
"""In the staging folder: what ``column_checks`` found in the batches the formats were written
from, read by the validating stage (``features_to_walk``)."""
MAX_FINDINGS_SHOWN = 100
"""The file shows the first findings; the full check reports them all."""


def _batches(staging: Path, *, findings: bool = True) -> Iterator[ExampleColumns]:
    """The staged dashboards as column batches: the examples read straight from the messages
    into the columns, the rest converted for the formats' per-feature fields. Each batch is
    checked as it is made; with ``findings`` a complete read records what ``column_checks``
    finds in them (``COLUMN_FINDINGS``)."""
    tokens = StringTable()
    found: list[ColumnFinding] = []
    for chunk in batch_sized(staged_dashboards(staging)):
        heads = [dashboard_from_pb(_without_examples(m)) for m in chunk]
        batch = example_columns(heads, tokens, examples=chunk)
        if findings:
            found += column_findings(batch)
        yield batch
    if findings:
        _record_findings(staging, found)


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


def _without_examples(message: dpb.FeatureDashboard) -> dpb.FeatureDashboard:
    head = dpb.FeatureDashboard()
    head.CopyFrom(message)  # in C: far cheaper than converting the examples it then drops
    head.ClearField("top_examples")
    for group in head.quantile_groups:
        group.ClearField("examples")
    return head


def _clear(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)


def _write_prd(
    job: JobRuntime,
    out: Path,
    inputs: Inputs,
    progress: Callable[[int], None],
    features_per_batch: int,
    along: Sequence[FormatKind] = (),
) -> int:
    """Writes the PRD layout, and the formats ``along`` from the same read of the staged
    dashboards; returns how many feature files were copied from an earlier archive."""
    shutil.rmtree(out / prd_json.FEATURES_DIR, ignore_errors=True)
    copied = 0
    earlier_hashes = inputs.reuse.hashes if inputs.reuse is not None else {}
    naming = job.plan.naming
    with ExitStack() as stack:
        earlier = None
        if inputs.reuse is not None:
            earlier = stack.enter_context(zipfile.ZipFile(inputs.reuse.archive))
        names = set(earlier.namelist()) if earlier is not None else set()

        def reuse(index: int, name: str) -> bytes | None:
            nonlocal copied
            unchanged = earlier_hashes.get(index) == inputs.hashes.get(index)
            if earlier is None or not unchanged or name not in names:
                return None
            copied += 1
            return earlier.read(name)

        def writer(kind: FormatKind) -> Callable[[Iterator[ExampleColumns]], None]:
            def write(batches: Iterator[ExampleColumns]) -> None:
                _clear(out / FOLDERS[kind])
                _write_other(job.staging, kind, naming, inputs, features_per_batch, None, batches)

            return write

        def others(batches: Iterator[ExampleColumns]) -> None:
            fan_out(batches, [writer(kind) for kind in along])

        prd_json.write_prd_export(
            out,
            inputs.info,
            naming,
            _batches(job.staging),
            inputs.explanations,
            labels=inputs.labels,
            compress_features=job.plan.compression.gzip_json,
            progress=progress,
            reuse=reuse,
            also=others if along else None,
        )
    return copied


def _write_other(
    staging: Path,
    kind: FormatKind,
    naming: NeuronpediaNaming,
    inputs: Inputs,
    features_per_batch: int,
    progress: Callable[[int], None] | None,
    batches: Iterator[ExampleColumns] | None = None,
) -> None:
    folder, info = output_dir(staging) / FOLDERS[kind], inputs.info
    batches = _batches(staging) if batches is None else batches
    if kind is FormatKind.NEURONPEDIA_IMPORT:
        write_importer_export(
            folder, info, naming, batches, inputs.neuronpedia_explanations, progress=progress
        )
    elif kind is FormatKind.SAEDASHBOARD:
        write_saedashboard_batches(
            folder,
            info,
            naming,
            batches,
            features_per_batch=features_per_batch,
            progress=progress,
        )
    else:
        write_upload_payloads(folder, naming, batches, inputs.neuronpedia_explanations)


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
    store: FeatureFacts, sae: spb.Sae, indices: Sequence[int]
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


def feature_labels(store: FeatureFacts, sae: spb.Sae, indices: Sequence[int]) -> list[FeatureLabel]:
    """The labels of ``indices`` that have one."""
    wanted = set(indices)
    return [
        FeatureLabel(f.feature_index, f.label, f.category, f.updated_at)
        for f in store.features(sae.sae_id, FeatureFilter(labeled_only=True), sae.owner)
        if f.feature_index in wanted and f.label.strip()
    ]


def saelens_frequencies(store: FeatureFacts, sae: spb.Sae) -> list[float]:
    """Every feature's activation frequency when the store has all of them; else empty."""
    d_sae = sae.d_sae
    frequencies = {
        f.feature_index: f.activation_frequency
        for f in store.features(sae.sae_id, FeatureFilter(), sae.owner)
    }
    if len(frequencies) != d_sae or set(frequencies) != set(range(d_sae)):
        return []
    return [frequencies[i] for i in range(d_sae)]
