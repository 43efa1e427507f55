"""The pass as Ray shards on a real local Ray cluster: exact merge, worker deaths, cancellation."""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from mistudio_common.dashboard import FeatureDashboard
from mistudio_common.errors import Cancelled
from mistudio_compute.dashboards import (
    Stage,
    compute_dashboards,
    distributed,
    finalize_dashboards,
    state_config,
)
from mistudio_compute.dashboards.checkpoint import FORMAT_VERSION
from mistudio_compute.dashboards.distributed import (
    RayCluster,
    Sharding,
    run_sharded_pass,
    shard_ranges,
)
from mistudio_compute.dashboards.shard_states import ShardFolder
from safetensors import safe_open
from safetensors.torch import save_file

from tests.compute.dashboards import tiny
from tests.compute.dashboards.test_pass_lifecycle import BATCH, PARAMS, flatten
from tests.compute.dashboards.test_shards import CHUNK, shard_budget
from tests.ray_cluster import local_ray_cluster

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """One local two-CPU Ray cluster for the module; workers import the tests package."""
    with local_ray_cluster():
        yield


@pytest.fixture(scope="module")
def inputs(model, relu_sae, tokens):
    return tiny.make_inputs(model, relu_sae, tokens)


@pytest.fixture(scope="module")
def reference(inputs) -> list[FeatureDashboard]:
    return flatten(compute_dashboards(inputs, PARAMS, batch_size=BATCH))


class PausedOnce:
    """Inputs whose reader, the first time any shard reads, writes its worker's PID to ``marker``
    and then waits ``pause_s`` (so a test can kill or cancel that worker mid-shard)."""

    def __init__(self, model, sae, tokens, marker: Path, pause_s: float) -> None:
        self.model, self.sae, self.tokens = model, sae, tokens
        self.marker, self.pause_s = marker, pause_s

    def __call__(self):
        inputs = tiny.make_inputs(self.model, self.sae, self.tokens)
        reader, marker, pause_s = inputs.reader, self.marker, self.pause_s

        class Reader:
            def activations(self, tokens: torch.Tensor) -> torch.Tensor:
                try:
                    with marker.open("x") as f:
                        f.write(str(os.getpid()))
                    time.sleep(pause_s)
                except FileExistsError:
                    pass
                return reader.activations(tokens)

        return tiny.make_inputs(self.model, self.sae, self.tokens, reader=Reader())


def sharded(
    inputs, make_inputs, shards: int, in_flight: int = 2, **kwargs
) -> list[FeatureDashboard]:
    """The tiny pass as ``shards`` Ray shards (``in_flight`` at once), finalised here."""
    tokens = inputs.source.tokens
    result = run_sharded_pass(
        make_inputs,
        state_config(PARAMS, tiny.SPECIAL),
        torch.arange(inputs.encoder.d_sae),
        rows=range(tokens.shape[0]),
        seq_len=tokens.shape[1],
        device=torch.device("cpu"),
        sharding=Sharding(address="", shards=shards, max_in_flight=in_flight, max_retries=2),
        batch_size=BATCH,
        **kwargs,
    )
    return flatten(finalize_dashboards(result.state, inputs, PARAMS))


def test_shards_cover_the_rows_once_in_order_cut_between_batches() -> None:
    assert shard_ranges(range(3, 67), 7, batch_size=8) == [
        range(3, 11), range(11, 19), range(19, 27), range(27, 35),
        range(35, 43), range(43, 51), range(51, 67),
    ]  # fmt: skip
    assert shard_ranges(range(0, 20), 7, batch_size=8) == [range(0, 8), range(8, 16), range(16, 20)]


def test_one_shard_is_identical_to_the_local_pass(inputs, model, relu_sae, tokens, reference):
    make = functools.partial(tiny.make_inputs, model, relu_sae, tokens)
    assert sharded(inputs, make, 1) == reference


@pytest.mark.parametrize("shards", [2, 7])
def test_shards_merged_equal_the_local_pass_bit_for_bit(
    shards, inputs, model, relu_sae, tokens, reference
):
    make = functools.partial(tiny.make_inputs, model, relu_sae, tokens)
    assert sharded(inputs, make, shards) == reference


def test_the_order_shards_finish_in_changes_no_bit(tmp_path, inputs, model, relu_sae, tokens):
    in_order = sharded(inputs, functools.partial(tiny.make_inputs, model, relu_sae, tokens), 7)
    first_last = PausedOnce(model, relu_sae, tokens, tmp_path / "pid", pause_s=3)
    assert sharded(inputs, first_last, 7) == in_order  # the first shard, held back, ends last


def test_progress_sums_finished_shards_and_never_goes_back(inputs, model, relu_sae, tokens):
    seen: list[tuple[int, int]] = []

    def progress(stage: Stage, done: int, total: int, message: str) -> None:
        seen.append((done, total))

    make = functools.partial(tiny.make_inputs, model, relu_sae, tokens)
    sharded(inputs, make, 7, progress=progress)
    dones = [d for d, _ in seen]
    assert dones == sorted(dones) and len(dones) == 7
    assert seen[-1] == (tokens.size, tokens.size)


def test_a_worker_killed_mid_shard_is_retried_to_the_same_result(
    tmp_path, inputs, model, relu_sae, tokens, reference
):
    marker = tmp_path / "pid"
    make = PausedOnce(model, relu_sae, tokens, marker, pause_s=30)
    killer = threading.Thread(target=kill_when_written, args=(marker,))
    killer.start()
    got = sharded(inputs, make, 2)
    killer.join()
    assert got == reference


def kill_when_written(marker: Path) -> None:
    pid = wait_for_pid(marker)
    os.kill(pid, signal.SIGKILL)


def wait_for_pid(marker: Path) -> int:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if marker.exists() and marker.read_text():
            return int(marker.read_text())
        time.sleep(0.05)
    raise AssertionError("no shard started")


def test_cancelling_the_computation_cancels_its_ray_tasks(
    tmp_path, inputs, model, relu_sae, tokens
):
    marker, cancel = tmp_path / "pid", threading.Event()
    make = PausedOnce(model, relu_sae, tokens, marker, pause_s=120)
    threading.Thread(target=lambda: (wait_for_pid(marker), cancel.set())).start()
    started = time.monotonic()
    with pytest.raises(Cancelled):
        sharded(inputs, make, 2, cancel=cancel)
    assert time.monotonic() - started < 60
    pid = int(marker.read_text())
    deadline = time.monotonic() + 10  # Ray reports a task killed before its process is gone
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid), "the worker running the cancelled shard is still running"


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by its raylet, does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class CountingReads:
    """Inputs whose reader leaves one file in ``folder`` per batch it reads (workers are other
    processes), so a test can count the batches a run computed."""

    def __init__(self, model, sae, tokens, folder: Path) -> None:
        self.model, self.sae, self.tokens, self.folder = model, sae, tokens, folder

    def __call__(self):
        inputs = tiny.make_inputs(self.model, self.sae, self.tokens)
        reader, folder = inputs.reader, self.folder

        class Reader:
            def activations(self, tokens: torch.Tensor) -> torch.Tensor:
                (folder / f"{os.getpid()}-{time.monotonic_ns()}").touch()
                return reader.activations(tokens)

        return tiny.make_inputs(self.model, self.sae, self.tokens, reader=Reader())


def test_feature_shards_past_the_budget_run_on_ray_to_the_same_dashboards(
    inputs,
    model,
    relu_sae,
    tokens,
    reference,
):
    budget = shard_budget(kept=0)  # Ray's workers run the forward: no activations are kept
    cluster = RayCluster(
        functools.partial(tiny.make_inputs, model, relu_sae, tokens),
        Sharding(address="", shards=3, max_in_flight=2),
    )
    seen: list[tuple[Stage, int, int]] = []
    got = flatten(compute_dashboards(
        inputs, PARAMS, batch_size=BATCH, chunk_size=CHUNK, memory_budget=budget, ray=cluster,
        progress=lambda stage, done, total, _: seen.append((stage, done, total)),
    ))  # fmt: skip
    assert got == reference
    passes = [(done, total) for stage, done, total in seen if stage is Stage.ACTIVATION_PASS]
    assert len({total for _, total in passes}) == 1, "one total over every feature shard"
    assert [d for d, _ in passes] == sorted(d for d, _ in passes)
    assert passes[-1][0] == passes[-1][1] > 3 * tokens.size  # several feature shards


def test_a_restarted_pass_reattaches_to_saved_shards_and_computes_only_the_rest(
    tmp_path, inputs, model, relu_sae, tokens, reference
):
    saved, cancel = ShardFolder(tmp_path / "shards"), threading.Event()
    reads, reads_again = tmp_path / "reads", tmp_path / "reads-again"
    reads.mkdir()
    reads_again.mkdir()
    shard_tokens = 2 * BATCH * tokens.shape[1]  # 8 batches in 4 shards of 2

    def stop_after_two_shards(stage: Stage, done: int, total: int, message: str) -> None:
        if done >= 2 * shard_tokens:
            cancel.set()

    with pytest.raises(Cancelled):
        sharded(inputs, CountingReads(model, relu_sae, tokens, reads), 4, saved=saved,
                progress=stop_after_two_shards, cancel=cancel)  # fmt: skip
    finished = len(list(saved.folder.iterdir()))
    assert finished >= 2
    first_report: list[int] = []
    got = sharded(inputs, CountingReads(model, relu_sae, tokens, reads_again), 4, saved=saved,
                  progress=lambda s, done, t, m: first_report.append(done))  # fmt: skip
    assert got == reference
    assert first_report[0] == finished * shard_tokens  # re-attached before any task ran
    assert len(list(reads_again.iterdir())) == (4 - finished) * 2  # the other shards' batches


def test_a_saved_shard_in_an_older_format_is_computed_again(
    tmp_path, inputs, model, relu_sae, tokens, reference, caplog
):
    saved, reads = ShardFolder(tmp_path / "shards"), tmp_path / "reads"
    reads.mkdir()
    sharded(inputs, CountingReads(model, relu_sae, tokens, reads), 4, saved=saved)
    outdated = sorted(saved.folder.iterdir())[0]
    rewrite_format_version(outdated, FORMAT_VERSION - 1)
    for read in reads.iterdir():
        read.unlink()
    with caplog.at_level(logging.WARNING, logger=distributed.__name__):
        got = sharded(inputs, CountingReads(model, relu_sae, tokens, reads), 4, saved=saved)
    assert got == reference
    assert len(list(reads.iterdir())) == 2  # the outdated shard's two batches, no other
    (warning,) = [r.getMessage() for r in caplog.records]
    assert str(outdated) in warning and f"format {FORMAT_VERSION - 1}" in warning


def rewrite_format_version(path: Path, version: int) -> None:
    """The checkpoint at ``path`` as an older release would have written it (same tensors)."""
    with safe_open(str(path), framework="pt") as f:
        metadata, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    ((key, raw),) = metadata.items()
    save_file(
        tensors,
        str(path),
        metadata={key: json.dumps({**json.loads(raw), "format_version": version})},
    )


class RecordsStarts:
    """Inputs of computation ``name`` whose reader, at each shard's first batch, leaves
    ``starts/<monotonic ns>-<name>`` (one clock for every process on the machine). With
    ``hold_for``, a shard also waits (up to 30 s, then never again) until a shard of that other
    computation has started, so the other is surely submitted while this one runs."""

    def __init__(self, model, sae, tokens, starts: Path, name: str, hold_for: str = "") -> None:
        self.model, self.sae, self.tokens = model, sae, tokens
        self.starts, self.name, self.hold_for = starts, name, hold_for

    def __call__(self):
        inputs = tiny.make_inputs(self.model, self.sae, self.tokens)
        reader, starts, name, hold_for = inputs.reader, self.starts, self.name, self.hold_for
        gave_up = starts.parent / f"{name}-gave-up"

        class Reader:
            first = threading.Lock()  # taken for good by the shard's first read (of several)

            def activations(self, tokens: torch.Tensor) -> torch.Tensor:
                if self.first.acquire(blocking=False):
                    (starts / f"{time.monotonic_ns():020d}-{name}").touch()
                    deadline = time.monotonic() + 30
                    while hold_for and not (started(starts, hold_for) or gave_up.exists()):
                        if time.monotonic() > deadline:
                            gave_up.touch()
                        time.sleep(0.02)
                return reader.activations(tokens)

        return tiny.make_inputs(self.model, self.sae, self.tokens, reader=Reader())


def started(starts: Path, name: str = "") -> list[str]:
    """The computations whose shards started (``name``'s only, when given), in start order."""
    order = [path.name.split("-", 1)[1] for path in sorted(starts.iterdir())]
    return [n for n in order if n == name] if name else order


def test_a_small_computation_started_behind_a_big_one_is_not_queued_behind_all_its_shards(
    tmp_path, inputs, model, relu_sae, tokens
):
    """Two CPUs; a big computation of 8 shards, at most one in flight (the per-job limit), and a
    small one of 2 shards started once the big one runs: every small shard starts before the big
    one's last shard does. Without the limit the big one's 8 shards would be queued first and
    the small one would wait for all of them."""
    starts = tmp_path / "starts"
    starts.mkdir()

    def computation(name: str, shards: int, in_flight: int, hold_for: str = "") -> threading.Thread:
        make = RecordsStarts(model, relu_sae, tokens, starts, name, hold_for)
        thread = threading.Thread(
            target=functools.partial(sharded, inputs, make, shards, in_flight=in_flight)
        )
        thread.start()
        return thread

    big = computation("big", 8, in_flight=1, hold_for="small")
    assert wait_until(lambda: started(starts, "big")), "the big computation started no shard"
    small = computation("small", 2, in_flight=2)
    big.join()
    small.join()
    order = started(starts)
    assert sorted(order) == ["big"] * 8 + ["small"] * 2, order
    last_big = len(order) - 1 - order[::-1].index("big")
    assert max(i for i, n in enumerate(order) if n == "small") < last_big, order


def wait_until(condition, timeout_s: float = 60) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())
