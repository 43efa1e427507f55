"""A large export's Neuronpedia formats, written range by range in a pool of processes, are
the bytes one process writes reading every feature in order: ranges are cut where SAEDashboard
and importer batches begin, and upload bodies (numbered by the features the API takes) are
packed once every range is written."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from dataclasses import replace
from multiprocessing.context import SpawnProcess
from pathlib import Path
from queue import SimpleQueue
from typing import Any

import pytest
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio_common.dashboard_codec import dashboard_to_pb
from mistudio_common.errors import Cancelled
from mistudio_export import feature_ranges, generate
from mistudio_export.feature_ranges import FeatureRange, Finished, RangeTask, RangeWritten
from mistudio_export.formats.example_wire import decode_examples
from mistudio_export.formats.upload_payloads import PayloadNotes
from mistudio_export.staged import write_chunk
from mistudio_export.validation import validator
from mistudio_export.worker_pool import WorkerPool

from tests.export.formats.builders import dashboard, naming, sae_info
from tests.export.stages.doubles import MemoryStore
from tests.export.stages.test_pipeline import Peers, neuronpedia

N_FEATURES = 1100
"""Past one importer batch (1024 features), so the export has two ranges."""
DEAD = (5, 1023, 1024, 1050)
"""Features with no examples: the upload payloads skip them, so a body's features are not the
next 128 indices and the numbering must carry over from one range to the next."""


def _dashboard(index: int) -> dpb.FeatureDashboard:
    return dashboard_to_pb(dashboard(index, dead=index in DEAD))


def _export(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    *,
    pooled: bool,
    on_count: Callable[[int], None] = lambda _: None,
    workers: WorkerPool | None = None,
) -> bytes:
    """The archive of an export in two ranges written in a pool, or in one range here;
    ``on_count`` hears the features written as the writing reports them."""
    peers = Peers(tmp_path)
    sae = replace(peers.store.sae, d_sae=N_FEATURES)
    peers.store = MemoryStore(sae, [_dashboard(i) for i in range(N_FEATURES)])
    seen: list[tuple[int, bool]] = []
    run = feature_ranges.run_ranges

    def spied(tasks: Any, *, pool: Any, progress: Callable[[int], None], **kwargs: Any) -> Any:
        handed: list[RangeTask] = []
        seen.append((0, pool is not None))

        def heard(n: int) -> None:
            on_count(n)
            progress(n)

        def counted() -> Any:
            for task in tasks:
                handed.append(task)
                seen[-1] = (len(handed), pool is not None)
                yield task

        return run(counted(), pool=pool, progress=heard, **kwargs)

    monkeypatch.setattr(generate, "run_ranges", spied)
    monkeypatch.setattr(feature_ranges, "RANGE_FEATURES", 1024 if pooled else N_FEATURES + 1)
    outcome = peers.export("job", neuronpedia(), workers=workers)
    assert seen == ([(2, True)] if pooled else [(1, False)])
    return peers.objects.objects[outcome.result.output_uri]


def test_ranges_written_in_a_pool_give_the_archive_one_process_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone = _export(tmp_path / "alone", monkeypatch, pooled=False)
    pooled = _export(tmp_path / "pooled", monkeypatch, pooled=True)

    assert pooled == alone
    with zipfile.ZipFile(io.BytesIO(pooled)) as zf:
        names = zf.namelist()
        manifest = zf.read("upload-payloads/manifest.json")
    assert b'"skipped_features":[5,1023,1024,1050]' in manifest
    assert "upload-payloads/upload-batch-8.json" in names  # 1096 features the API takes
    assert "saedashboard/batch-8.json" in names


def test_the_pool_reports_features_written_as_its_ranges_go_not_only_as_they_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ranges run side by side and end close together: counted only at their ends, the
    file stage's rate from one range's end to the next made its ETA a fraction of its time
    (x0.55 at 75% of the 4,096-feature bench export's wall)."""
    counts: list[int] = []
    _export(tmp_path, monkeypatch, pooled=True, on_count=counts.append)

    range_ends = {1024, N_FEATURES - 1024, N_FEATURES}
    within = [n for n in counts if n not in range_ends]
    assert len(within) >= 1024 // feature_ranges.REPORT_EVERY, counts
    assert counts == sorted(counts) and counts[-1] == N_FEATURES


def test_the_files_are_checked_in_the_processes_that_wrote_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spawned: list[SpawnProcess]
) -> None:
    """A spawned process imports the export's modules before its first task (0.34 CPU-s each on
    the bench machine): the validating stage takes the processes the file stage started, where
    it started one of its own."""
    started = spawned
    monkeypatch.setattr(validator, "PARALLEL_MIN_BYTES", 0)
    workers = WorkerPool(2)
    try:
        _export(tmp_path, monkeypatch, pooled=True, workers=workers)
    finally:
        workers.shutdown()

    assert len(started) == 2  # the two ranges' writers


def test_a_stop_while_the_pool_writes_ends_its_processes_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spawned: list[SpawnProcess]
) -> None:
    """A cancel or pause raises in the stage while the ranges are written; the pool's
    processes would otherwise write every range queued first."""

    class Stopped(Exception):
        pass

    def stop(_n: int) -> None:
        raise Stopped

    started = spawned
    with pytest.raises(Stopped):
        _export(tmp_path, monkeypatch, pooled=True, on_count=stop)

    assert started and not any(process.is_alive() for process in started)


def _range_of_parts(folder: Path, number: int, features: list[bytes]) -> RangeTask:
    """A range whose task has written ``features`` as its upload parts."""
    task = RangeTask(
        range=FeatureRange((), 0, {}),
        folders={},
        info=sae_info(),
        naming=naming(),
        explanations=(),
        features_per_batch=128,
        compress_features=False,
        reuse=None,
        payloads=feature_ranges.payloads_path(folder, number),
    )
    feature_ranges._write_parts(task.payloads, iter(features))
    return task


def _ended(skipped: int) -> RangeWritten:
    return RangeWritten(payload_notes=PayloadNotes(skipped=[skipped]))


def test_upload_features_are_packed_in_range_order_as_soon_as_the_ranges_before_are_written(
    tmp_path: Path,
) -> None:
    """The bodies are packed while the later ranges are written; ranges end in any order."""
    for n in range(3):
        _range_of_parts(tmp_path, n, [b"%da" % n, b"%db" % n])
    finished: Finished = SimpleQueue()
    notes = PayloadNotes()
    parts = feature_ranges.payload_parts(tmp_path, finished, notes)

    finished.put((0, _ended(0)))
    assert [next(parts), next(parts)] == [b"0a", b"0b"]  # ranges 1 and 2 still being written
    finished.put((2, _ended(2)))
    finished.put((1, _ended(1)))
    finished.put(3)  # what run_ranges hands over once every range is written
    assert list(parts) == [b"1a", b"1b", b"2a", b"2b"]
    assert notes.skipped == [0, 1, 2]


def test_the_upload_bodies_stop_with_the_ranges_they_wait_for(tmp_path: Path) -> None:
    for n in range(2):
        _range_of_parts(tmp_path, n, [b"%d" % n])
    finished: Finished = SimpleQueue()
    parts = feature_ranges.payload_parts(tmp_path, finished, PayloadNotes())

    finished.put((0, _ended(0)))
    finished.put(None)  # what run_ranges hands over when a stop ends it
    assert next(parts) == b"0"
    with pytest.raises(Cancelled):
        next(parts)


def _unpacked_ids(example: dpb.ActivationExample) -> bytes:
    """``example`` serialised with its token ids one record each (a layout every protobuf
    parser reads as the packed one, but not the one protobuf writes)."""
    ids = list(example.token_ids)
    rest = dpb.ActivationExample()
    rest.CopyFrom(example)
    rest.ClearField("token_ids")
    return rest.SerializeToString() + b"".join(
        b"\x10" + dpb.Histogram(counts=[i]).SerializeToString()[2:] for i in ids
    )


def test_dashboards_laid_out_otherwise_are_read_through_the_message_classes(
    tmp_path: Path,
) -> None:
    messages = [_dashboard(i) for i in range(3)]
    canonical = [m.SerializeToString() for m in messages]
    split = dpb.FeatureDashboardSplit.FromString(canonical[1])
    split.top_examples[0] = _unpacked_ids(messages[1].top_examples[0])
    other = [canonical[0], split.SerializeToString(), canonical[2]]
    assert dpb.FeatureDashboard.FromString(other[1]) == messages[1] and other != canonical
    assert decode_examples(list(split.top_examples)) is None  # not decoded from its bytes

    def batches(wires: list[bytes]) -> list[Any]:
        path = tmp_path / f"chunk-{len(list(tmp_path.iterdir())):06d}.bin"
        write_chunk(path, wires, {i: "0" * 64 for i in range(3)})
        found: list[Any] = []
        return list(feature_ranges._batches([path], found))

    (expected,) = batches(canonical)
    (got,) = batches(other)
    for field in ("token_start", "token_ids", "values", "max_value", "source_row"):
        assert getattr(got, field).tolist() == getattr(expected, field).tolist(), field
    shown = [[c.tokens.strings()[code] for code in c.token_codes] for c in (got, expected)]
    assert shown[0] == shown[1]
