"""Feature shards under a memory budget: same dashboards, monotonic progress, resumable, and a
memory prediction that matches a measured peak."""

from __future__ import annotations

import gc
import json
import math
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from mistudio_common.dashboard import DashboardParams, FeatureDashboard
from mistudio_common.dashboard_codec import dashboard_from_pb, dashboard_to_pb
from mistudio_common.errors import Cancelled, ResourceExhausted
from mistudio_common.stage_rates import ShardCosts
from mistudio_compute.adapters import SaeFeatures
from mistudio_compute.dashboards import (
    Checkpointing,
    PassState,
    Stage,
    compute_dashboards,
    state_config,
)
from mistudio_compute.dashboards.kept_activations import KeptActivations
from mistudio_compute.dashboards.memory import PLANNED_SHARE, MemoryModel, plan_within_budget
from mistudio_compute.dashboards.shards import PassCount
from mistudio_compute.sae import architectures, build_sae

from tests.compute.builders import sae_config
from tests.compute.dashboards import tiny

PARAMS = DashboardParams(
    n_top_examples=20,
    n_quantile_groups=3,
    examples_per_quantile_group=2,
    context_left=3,
    context_right=2,
    histogram_bins=20,
    aggregate_all_tokens=True,
)
BATCH = 8
CHUNK = 16
SHARD = 24  # 96 features -> 4 shards


def flatten(chunks) -> list[FeatureDashboard]:
    return [dashboard_from_pb(d) for chunk in chunks for d in chunk]


@pytest.fixture(scope="module")
def inputs(model, relu_sae, tokens):
    return tiny.make_inputs(model, relu_sae, tokens)


KEPT = tiny.ROWS * tiny.N_CTX * tiny.D_MODEL * 4  # every token's hook activations, float32
BATCHES = -(-tiny.ROWS // BATCH)


def shard_budget(kept: int) -> int:
    """A budget that fits SHARD features beside a batch, a chunk and ``kept`` bytes."""
    config = state_config(PARAMS, tiny.SPECIAL)
    memory = MemoryModel.of(PARAMS, config, tiny.ROWS, tiny.N_CTX)
    planned = memory.peak(SHARD, BATCH * tiny.N_CTX, CHUNK) + memory.per_feature // 2 + kept
    return math.ceil(planned / PLANNED_SHARE)


@pytest.fixture(scope="module")
def budget(inputs) -> int:
    """Room for SHARD features and the kept activations of a local sharded pass."""
    return shard_budget(KEPT)


def counting_forwards(inputs):
    """``inputs`` whose model forward counts its calls (made on several threads at once), and
    the count so far."""
    calls, counting = [0], threading.Lock()
    reader = inputs.reader

    class Counting:
        def activations(self, tokens: torch.Tensor) -> torch.Tensor:
            with counting:
                calls[0] += 1
            return reader.activations(tokens)

    return replace(inputs, reader=Counting()), lambda: calls[0]


def assert_same_bytes(got: list[FeatureDashboard], expected: list[FeatureDashboard]) -> None:
    assert [d.feature_index for d in got] == [d.feature_index for d in expected]
    for a, b in zip(got, expected, strict=True):
        pa, pb = dashboard_to_pb(a), dashboard_to_pb(b)
        assert pa.SerializeToString(deterministic=True) == pb.SerializeToString(deterministic=True)


@pytest.fixture(scope="module")
def reference(inputs) -> list[FeatureDashboard]:
    return flatten(compute_dashboards(inputs, PARAMS, batch_size=BATCH, chunk_size=CHUNK))


def sharded(inputs, budget: int, **kwargs) -> list[FeatureDashboard]:
    return flatten(compute_dashboards(inputs, PARAMS, batch_size=BATCH, chunk_size=CHUNK,
                                      memory_budget=budget, **kwargs))  # fmt: skip


def test_sharded_dashboards_equal_the_unsharded_run_byte_for_byte(inputs, budget, reference):
    counted, forwards = counting_forwards(inputs)
    got = sharded(counted, budget)
    assert forwards() == BATCHES  # 4 shards, one model forward: later shards read it back
    assert_same_bytes(got, reference)


def test_a_budget_without_room_to_keep_the_activations_runs_the_forward_per_shard(
    inputs, reference
) -> None:
    tight = math.ceil(1.5 * KEPT / PLANNED_SHARE)  # they would take 2/3 of the planned bytes
    config = state_config(PARAMS, tiny.SPECIAL)
    plan = plan_within_budget(PARAMS, config, inputs.encoder.d_sae, batch_rows=BATCH,
                              seq_len=tiny.N_CTX, n_rows=tiny.ROWS, chunk_size=CHUNK,
                              budget=tight, hook_width=tiny.D_MODEL)  # fmt: skip
    n_shards = -(-inputs.encoder.d_sae // plan.shard_size)
    assert plan.kept_bytes == 0 and n_shards > 1
    counted, forwards = counting_forwards(inputs)
    got = sharded(counted, tight)
    assert forwards() == n_shards * BATCHES
    assert_same_bytes(got, reference)


def test_the_plan_counts_the_kept_activations_in_its_peak(inputs, budget) -> None:
    config = state_config(PARAMS, tiny.SPECIAL)

    def plan(budget: int | None, hook_width: int):
        return plan_within_budget(PARAMS, config, inputs.encoder.d_sae, batch_rows=BATCH,
                                  seq_len=tiny.N_CTX, n_rows=tiny.ROWS, chunk_size=CHUNK,
                                  budget=budget, hook_width=hook_width)  # fmt: skip

    kept, forward = plan(budget, tiny.D_MODEL), plan(budget - KEPT, 0)
    assert (kept.shard_size, kept.kept_bytes) == (SHARD, KEPT)
    assert kept.peak_bytes == forward.peak_bytes + KEPT
    assert kept.peak_bytes <= budget * PLANNED_SHARE
    assert plan(None, tiny.D_MODEL).kept_bytes == 0  # one shard: nothing to keep them for


def test_rows_kept_under_other_batch_boundaries_run_the_forward_and_are_held_once(
    inputs,
) -> None:
    counted, forwards = counting_forwards(inputs)
    kept = KeptActivations(tiny.ROWS)
    rows = torch.from_numpy(inputs.source.tokens[:8].astype("int64"))
    first = kept.read(counted.reader, rows, range(0, 8))
    assert kept.read(counted.reader, rows, range(0, 8)) is first and forwards() == 1
    half = kept.read(counted.reader, rows[:4], range(0, 4))  # the batch halved: not kept
    assert forwards() == 2 and torch.equal(half, first[:4])
    assert kept.read(counted.reader, rows[:4], range(0, 4)) is not half


def test_a_real_sae_encodes_only_each_shards_blocks_to_the_unsharded_bytes(
    monkeypatch, model, relu_sae, tokens, budget
) -> None:
    monkeypatch.setattr(architectures, "ENCODE_BLOCK", 16)  # shards of 24 cut across blocks
    weights = {"W_enc": relu_sae.w_enc, "b_enc": relu_sae.b_enc, "W_dec": relu_sae.w_dec,
               "b_dec": torch.zeros(tiny.D_MODEL)}  # fmt: skip
    cfg = sae_config("standard", tiny.D_MODEL, relu_sae.d_sae, hook_name=tiny.HOOK)
    encoder = SaeFeatures(build_sae(cfg, weights))
    widths: list[int] = []

    class Recording:
        d_sae, d_in, device, encode = encoder.d_sae, encoder.d_in, encoder.device, encoder.encode

        def encode_features(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
            widths.append(len(features))
            return encoder.encode_features(x, features)

    inputs = replace(tiny.make_inputs(model, relu_sae, tokens), encoder=Recording())
    full = flatten(compute_dashboards(inputs, PARAMS, batch_size=BATCH, chunk_size=CHUNK))
    assert widths == []  # the unsharded pass encodes every feature at once
    got = sharded(inputs, budget)
    assert set(widths) == {SHARD}  # each shard's pass encodes its own features
    assert_same_bytes(got, full)


def test_progress_never_goes_back_across_shards(inputs, budget) -> None:
    events: list[tuple[Stage, int, int, str]] = []
    sharded(inputs, budget, progress=lambda s, d, t, m: events.append((s, d, t, m)))
    finalising = [s is not Stage.ACTIVATION_PASS for s, *_ in events]
    assert finalising == sorted(finalising)  # no pass report after finalisation began
    for stage in Stage:
        done = [d for s, d, _, _ in events if s is stage]
        assert done == sorted(done), stage
    pass_events = [(d, t) for s, d, t, _ in events if s is Stage.ACTIVATION_PASS]
    assert pass_events[-1] == (4 * tiny.ROWS * tiny.N_CTX,) * 2
    last = {s: (d, t) for s, d, t, _ in events}
    assert last[Stage.HISTOGRAMS] == (inputs.encoder.d_sae,) * 2
    assert any("feature shard 2 of 4" in m for *_, m in events)


def test_a_sharded_run_resumes_at_the_shard_and_batch_where_it_stopped(
    inputs, budget, reference, tmp_path: Path
) -> None:
    checkpoint = Checkpointing(tmp_path / "pass.safetensors", every_seconds=0.0)
    cancel = threading.Event()
    tokens = tiny.ROWS * tiny.N_CTX
    stop_at = tokens + 3 * BATCH * tiny.N_CTX  # shard 2, after its third batch

    def stop(stage: Stage, done: int, total: int, message: str) -> None:
        if stage is Stage.ACTIVATION_PASS and done == stop_at:
            cancel.set()

    with pytest.raises(Cancelled):
        sharded(inputs, budget, checkpoint=checkpoint, progress=stop, cancel=cancel)
    resumed: list[int] = []

    def record(stage: Stage, done: int, total: int, message: str) -> None:
        if stage is Stage.ACTIVATION_PASS:
            resumed.append(done)

    again = sharded(inputs, budget, checkpoint=checkpoint, progress=record)
    assert again[0].feature_index == SHARD  # shard 1 was handed on before the stop
    assert again == reference[SHARD:]
    assert resumed[:2] == [3 * BATCH * tiny.N_CTX, 4 * BATCH * tiny.N_CTX]


def test_a_budget_without_room_for_one_feature_is_resource_exhausted(inputs) -> None:
    with pytest.raises(ResourceExhausted) as err:
        compute_dashboards(inputs, PARAMS, batch_size=BATCH, memory_budget=1 << 12)
    assert err.value.field == "params.n_quantile_groups"
    assert "MISTUDIO_COMPUTE_MEMORY_BUDGET_BYTES" in err.value.fix


def test_a_batch_over_the_state_per_feature_is_halved_until_it_is_not(inputs, budget) -> None:
    config = state_config(PARAMS, tiny.SPECIAL)
    memory = MemoryModel.of(PARAMS, config, tiny.ROWS, tiny.N_CTX)
    one_row = memory.per_batch_value * tiny.N_CTX  # one feature's bytes of one row
    d_sae = inputs.encoder.d_sae
    plan = plan_within_budget(PARAMS, config, d_sae, batch_rows=64, seq_len=tiny.N_CTX,
                              n_rows=tiny.ROWS, chunk_size=CHUNK, budget=budget)  # fmt: skip
    assert plan.batch_rows * one_row <= memory.per_feature < 2 * plan.batch_rows * one_row
    usable = int(budget * PLANNED_SHARE)
    assert memory.peak(plan.shard_size, plan.batch_rows * tiny.N_CTX, CHUNK) <= usable
    unbounded = plan_within_budget(PARAMS, config, d_sae, batch_rows=64, seq_len=tiny.N_CTX,
                                   n_rows=tiny.ROWS, chunk_size=CHUNK, budget=None)  # fmt: skip
    assert (unbounded.batch_rows, unbounded.shard_size) == (64, d_sae)  # no budget: as asked


def test_a_batch_over_the_state_per_feature_stays_as_asked_when_every_feature_fits_one_shard(
    inputs,
) -> None:
    """Halving it would let no more features share a model pass, only fold in more batches."""
    config = state_config(PARAMS, tiny.SPECIAL)
    memory = MemoryModel.of(PARAMS, config, tiny.ROWS, tiny.N_CTX)
    d_sae, rows = inputs.encoder.d_sae, 64
    assert memory.per_batch_value * rows * tiny.N_CTX > memory.per_feature
    one_shard = memory.peak(d_sae, rows * tiny.N_CTX, CHUNK)
    plan = plan_within_budget(PARAMS, config, d_sae, batch_rows=rows, seq_len=tiny.N_CTX,
                              n_rows=tiny.ROWS, chunk_size=CHUNK,
                              budget=2 * one_shard)  # fmt: skip
    assert (plan.batch_rows, plan.shards) == (rows, 1)


def test_shards_are_evened_out_so_the_largest_is_no_larger_than_needed() -> None:
    config = state_config(PARAMS, tiny.SPECIAL)
    memory = MemoryModel.of(PARAMS, config, tiny.ROWS, tiny.N_CTX)
    positions = BATCH * tiny.N_CTX
    budget = math.ceil(memory.peak(70, positions, CHUNK) / PLANNED_SHARE)  # 70 fit: 2 shards
    plan = plan_within_budget(PARAMS, config, 96, batch_rows=BATCH, seq_len=tiny.N_CTX,
                              n_rows=tiny.ROWS, chunk_size=CHUNK, budget=budget)  # fmt: skip
    assert plan.shard_size == 48


def test_state_size_per_feature_is_that_of_the_allocated_state() -> None:
    config = state_config(PARAMS, tiny.SPECIAL)
    for positions in (tiny.ROWS * tiny.N_CTX, 2**31):  # counts in int32 where they fit
        cpu = torch.device("cpu")
        state = PassState.empty(config, torch.arange(10), tiny.N_CTX, cpu, positions)
        nbytes = sum(t.numel() * t.element_size() for n, t in state.tensors().items()
                     if not n.startswith("tokens."))  # fmt: skip
        assert PassState.bytes_per_feature(config, positions) * 10 == nbytes
    assert PassState.bytes_per_feature(config, 2**31) > PassState.bytes_per_feature(config, 1)


@pytest.mark.slow
def test_a_sharded_run_stays_under_its_budget_within_30_percent_of_the_prediction() -> None:
    budget = 300_000_000
    out = subprocess.run(
        [sys.executable, "-m", "tests.compute.dashboards.peak_probe", "2048", str(budget)],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["shard"] < 2048  # the budget forced shards
    assert probe["kept"] > 0  # and left room to keep the hook activations
    assert probe["measured"] == pytest.approx(probe["predicted"], rel=0.3)
    assert probe["measured"] <= budget


def test_the_pass_stage_counts_an_earlier_shards_finalisation_as_the_time_it_takes() -> None:
    """Finalising a feature predicted at half its pass: the first of two shards spans 1.5
    shards' passes of the count, the last (finalised in its own stages) one; one shard counts
    its tokens."""
    count = PassCount.of([(0, 100), (100, 200)], ShardCosts(finalising=0.5), forward_each=False)
    count.tokens = 1_000
    assert count.at(0, 1.0) == (1_000, 2_500)  # the first pass done
    assert count.at(1, 0.0) == (1_500, 2_500)  # and its finalisation
    alone = PassCount.of([(0, 200)], ShardCosts(finalising=0.5, forward=50), forward_each=True)
    alone.tokens = 1_000
    assert alone.at(0, 0.5) == (500, 1_000)


def test_the_pass_stage_counts_each_model_forward_the_shards_run() -> None:
    """A forward worth 50 features: the first shard runs it (its pass takes 150 of the 250
    features' worth the two passes take); without kept activations, both do."""
    kept = PassCount.of([(0, 100), (100, 200)], ShardCosts(forward=50), forward_each=False)
    each = PassCount.of([(0, 100), (100, 200)], ShardCosts(forward=50), forward_each=True)
    assert [p for p, _ in kept.spans] == pytest.approx([1.2, 0.8])
    assert each.spans == ((1.0, 0.0), (1.0, 0.0))


def test_an_earlier_shards_finalisation_advances_the_pass_stage(inputs, budget) -> None:
    """Finalising a feature predicted to take as long as its pass: the pass stage counts the
    first three shards' finalisation as three more shards' passes."""
    events: list[tuple[Stage, int, int, str]] = []
    sharded(inputs, budget, progress=lambda s, d, t, m: events.append((s, d, t, m)),
            costs=ShardCosts(finalising=1.0))  # fmt: skip
    passing = [(d, t, m) for s, d, t, m in events if s is Stage.ACTIVATION_PASS]
    tokens = tiny.ROWS * tiny.N_CTX
    assert passing[-1][:2] == (7 * tokens, 7 * tokens)  # 4 passes and 3 finalisations
    finalising = {d for d, _, m in passing if m == "feature shard 1 of 4: finalising"}
    assert finalising == {tokens, round(tokens * (1 + CHUNK / SHARD))}  # chunks before the one
    second = [d for d, _, m in passing if m == "feature shard 2 of 4"]
    assert second[0] == 2 * tokens  # the first shard's span: its pass and its finalisation


def test_a_finished_shard_is_handed_back_without_a_garbage_collection(inputs, budget) -> None:
    """A full collection costs a fixed quarter of a CPU second a shard in a service with a
    model loaded, whatever the shard's size; the shard's state goes with its last reference."""
    collections: list[int] = []

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            collections.append(info["generation"])

    gc.disable()  # only collections the computation asks for
    gc.callbacks.append(count)
    try:
        got = sharded(inputs, budget)
    finally:
        gc.callbacks.remove(count)
        gc.enable()
    assert len(got) == inputs.encoder.d_sae
    assert collections == []
