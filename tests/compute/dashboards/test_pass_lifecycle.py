"""Split, merge, checkpoint, resume, out-of-memory, cancellation and progress of the pass."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from mistudio_common.dashboard import DashboardParams, FeatureDashboard
from mistudio_common.dashboard_codec import dashboard_from_pb
from mistudio_common.errors import Cancelled, FailedPrecondition, ResourceExhausted
from mistudio_compute.dashboards import (
    Checkpointing,
    Stage,
    compute_dashboards,
    finalize_dashboards,
    run_activation_pass,
    state_config,
)
from mistudio_compute.dashboards.checkpoint import load_checkpoint
from mistudio_compute.dashboards.keys import sample_position, top_position
from mistudio_compute.dashboards.state import PassState

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


def flatten(chunks) -> list[FeatureDashboard]:
    return [dashboard_from_pb(d) for chunk in chunks for d in chunk]


@pytest.fixture(scope="module")
def inputs(model, relu_sae, tokens):
    return tiny.make_inputs(model, relu_sae, tokens)


@pytest.fixture(scope="module")
def reference(inputs) -> list[FeatureDashboard]:
    return flatten(compute_dashboards(inputs, PARAMS, batch_size=BATCH))


class FlakyReader:
    """Raises a real CUDA out-of-memory error for batches above ``max_rows``; counts its calls
    (made on several threads at once)."""

    def __init__(self, reader, max_rows: int) -> None:
        self.reader, self.max_rows, self.calls = reader, max_rows, 0
        self._counting = threading.Lock()

    def activations(self, tokens: torch.Tensor) -> torch.Tensor:
        with self._counting:
            self.calls += 1
        if tokens.shape[0] > self.max_rows:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.reader.activations(tokens)


def in_key_order(state: PassState) -> dict[str, torch.Tensor]:
    """The state's tensors with each feature's sample in key order: sample slots keep no
    order, so two states of the same rows may hold the same sample in other slots."""
    out, order = state.tensors(), state.sample_order()
    for name in ("sample_keys", "sample_values", "sample_hash"):
        out[name] = out[name].gather(1, order)
    windows = out["sample_windows"]
    out["sample_windows"] = windows.gather(1, order[..., None].expand_as(windows))
    return out


def test_two_halves_merged_equal_one_pass_in_key_order(inputs, reference) -> None:
    config = state_config(PARAMS, tiny.SPECIAL)
    features = torch.arange(inputs.encoder.d_sae)
    first = run_activation_pass(inputs, config, features, rows=range(0, 24), batch_size=BATCH)
    second = run_activation_pass(inputs, config, features, rows=range(24, 64), batch_size=BATCH)
    whole = run_activation_pass(inputs, config, features, batch_size=BATCH)
    merged = second.state.merge(first.state)  # order does not matter either
    for name, tensor in in_key_order(whole.state).items():
        assert torch.equal(in_key_order(merged)[name], tensor), name
    assert merged.token_count == whole.state.token_count
    assert flatten(finalize_dashboards(merged, inputs, PARAMS)) == reference


def stop_after_three_batches_then_resume(
    inputs, checkpoint: Checkpointing
) -> tuple[list[FeatureDashboard], list[int]]:
    """Cancels the computation once the pass has folded three batches, then runs it again;
    returns the second run's dashboards and its pass progress counts."""
    cancel = threading.Event()

    def stop(stage: Stage, done: int, total: int, message: str) -> None:
        if stage is Stage.ACTIVATION_PASS and done == 3 * BATCH * tiny.N_CTX:
            cancel.set()

    with pytest.raises(Cancelled):
        flatten(compute_dashboards(inputs, PARAMS, batch_size=BATCH, checkpoint=checkpoint,
                                   progress=stop, cancel=cancel))  # fmt: skip
    assert checkpoint.path.exists()
    resumed: list[int] = []

    def record(stage: Stage, done: int, total: int, message: str) -> None:
        if stage is Stage.ACTIVATION_PASS:
            resumed.append(done)

    again = flatten(compute_dashboards(inputs, PARAMS, batch_size=BATCH, checkpoint=checkpoint,
                                       progress=record))  # fmt: skip
    return again, resumed


def test_checkpoint_resume_gives_identical_result(inputs, reference, tmp_path: Path) -> None:
    checkpoint = Checkpointing(tmp_path / "pass.safetensors", every_seconds=0.0)
    again, resumed = stop_after_three_batches_then_resume(inputs, checkpoint)
    assert again == reference
    t = tiny.N_CTX
    assert resumed[:2] == [3 * BATCH * t, 4 * BATCH * t]  # resumed after the third batch
    assert resumed[-1] == tiny.ROWS * t


def test_an_interrupted_pass_checkpoints_where_it_stopped(inputs, reference, tmp_path) -> None:
    """Periodic checkpoints are rare (a minute of the pass by default); a pause loses no batch."""
    checkpoint = Checkpointing(tmp_path / "pass.safetensors", every_seconds=3600.0)
    again, resumed = stop_after_three_batches_then_resume(inputs, checkpoint)
    assert resumed[:2] == [3 * BATCH * tiny.N_CTX, 4 * BATCH * tiny.N_CTX]  # no batch run twice
    assert again == reference


def saved_row_after_each_batch(inputs, checkpoint: Checkpointing) -> list[int | None]:
    """The next row the checkpoint names as each batch of a pass reports (None: none saved)."""
    config = state_config(PARAMS, tiny.SPECIAL)
    saved: list[int | None] = []

    def record(stage: Stage, done: int, total: int, message: str) -> None:
        if done and checkpoint.path.exists():
            saved.append(load_checkpoint(checkpoint.path, torch.device("cpu"))[1].next_row)
        elif done:
            saved.append(None)

    run_activation_pass(inputs, config, torch.arange(inputs.encoder.d_sae), batch_size=BATCH,
                        checkpoint=checkpoint, progress=record)  # fmt: skip
    return saved


def test_a_pass_shorter_than_the_checkpoint_interval_saves_nothing(inputs, tmp_path: Path) -> None:
    """Its work is worth less than a write of the whole state; a pause keeps it (below)."""
    checkpoint = Checkpointing(tmp_path / "pass.safetensors", every_seconds=3600.0)
    saved = saved_row_after_each_batch(inputs, checkpoint)
    assert saved == [None] * (tiny.ROWS // BATCH)
    assert not checkpoint.path.exists()


def test_a_pause_during_finalisation_keeps_the_finished_pass_and_the_resume_skips_it(
    inputs, reference, tmp_path: Path
) -> None:
    checkpoint = Checkpointing(tmp_path / "pass.safetensors", every_seconds=3600.0)
    cancel = threading.Event()
    saved_when_paused: list[bool] = []

    def pause_in_finalisation(stage: Stage, done: int, total: int, message: str) -> None:
        if stage is not Stage.ACTIVATION_PASS and not cancel.is_set():
            saved_when_paused.append(checkpoint.path.exists())
            cancel.set()

    with pytest.raises(Cancelled):
        flatten(compute_dashboards(inputs, PARAMS, batch_size=BATCH, checkpoint=checkpoint,
                                   progress=pause_in_finalisation, cancel=cancel))  # fmt: skip
    assert saved_when_paused == [False]
    assert load_checkpoint(checkpoint.path, torch.device("cpu"))[1].next_row == tiny.ROWS

    forwards = FlakyReader(inputs.reader, max_rows=tiny.ROWS)
    again = flatten(compute_dashboards(replace(inputs, reader=forwards), PARAMS,
                                       batch_size=BATCH, checkpoint=checkpoint))  # fmt: skip
    assert forwards.calls == 0  # no batch of the pass ran again
    assert again == reference


def test_a_zero_checkpoint_interval_saves_after_every_batch(inputs, tmp_path: Path) -> None:
    checkpoint = Checkpointing(tmp_path / "pass.safetensors", every_seconds=0.0)
    saved = saved_row_after_each_batch(inputs, checkpoint)
    assert saved == list(range(BATCH, tiny.ROWS + 1, BATCH))


def test_checkpoint_of_another_job_is_refused(inputs, tmp_path: Path) -> None:
    checkpoint = Checkpointing(tmp_path / "pass.safetensors", every_seconds=0.0)
    config = state_config(PARAMS, tiny.SPECIAL)
    run_activation_pass(inputs, config, torch.arange(10), rows=range(0, 8), checkpoint=checkpoint)
    with pytest.raises(FailedPrecondition) as err:
        run_activation_pass(inputs, config, torch.arange(12), rows=range(0, 8),
                            checkpoint=checkpoint)  # fmt: skip
    assert err.value.field == "checkpoint"


def test_out_of_memory_halves_the_batch_and_carries_on(inputs, reference) -> None:
    flaky = replace(inputs, reader=FlakyReader(inputs.reader, max_rows=BATCH))
    messages: list[str] = []

    def record(stage: Stage, done: int, total: int, message: str) -> None:
        if message:
            messages.append(message)

    got = flatten(compute_dashboards(flaky, PARAMS, batch_size=4 * BATCH, progress=record))
    assert messages == [
        "out of memory: batch size halved to 16",
        "out of memory: batch size halved to 8",
    ]
    assert got == reference


def test_out_of_memory_with_one_row_is_resource_exhausted(inputs) -> None:
    flaky = replace(inputs, reader=FlakyReader(inputs.reader, max_rows=0))
    with pytest.raises(ResourceExhausted):
        flatten(compute_dashboards(flaky, PARAMS, batch_size=2))


def test_cancellation_stops_between_batches(inputs) -> None:
    counting = FlakyReader(inputs.reader, max_rows=10**6)
    cancel = threading.Event()

    def cancel_after_first(stage: Stage, done: int, total: int, message: str) -> None:
        if done > 0:  # the first report is the stage's start
            cancel.set()

    dashboards = compute_dashboards(replace(inputs, reader=counting), PARAMS, batch_size=BATCH,
                                    progress=cancel_after_first, cancel=cancel)  # fmt: skip
    with pytest.raises(Cancelled):
        next(dashboards)
    assert counting.calls == 1


def test_examples_need_no_second_model_pass(inputs, reference) -> None:
    counting = FlakyReader(inputs.reader, max_rows=10**6)
    got = flatten(compute_dashboards(replace(inputs, reader=counting), PARAMS, batch_size=BATCH))
    assert got == reference
    assert counting.calls == -(-tiny.ROWS // BATCH)  # one forward per pass batch, no more


def test_the_examples_stage_begins_before_the_examples_are_chosen(inputs) -> None:
    """Choosing them is finalisation's work: the pass's stage ends when it starts."""
    events: list[tuple[int, int]] = []

    def record(stage: Stage, done: int, total: int, message: str) -> None:
        if stage is Stage.LOADING_EXAMPLES:
            events.append((done, total))

    flatten(compute_dashboards(inputs, PARAMS, batch_size=BATCH, progress=record))
    assert events[0] == (0, 0)
    assert events[-1][0] == events[-1][1] > 0


def test_progress_covers_every_stage_and_ends_complete(inputs) -> None:
    events: list[tuple[Stage, int, int]] = []
    flatten(compute_dashboards(inputs, PARAMS, batch_size=BATCH, chunk_size=40,
                               progress=lambda s, d, t, m: events.append((s, d, t))))  # fmt: skip
    last = {stage: (done, total) for stage, done, total in events}
    n = inputs.encoder.d_sae
    assert last[Stage.ACTIVATION_PASS] == (tiny.ROWS * tiny.N_CTX,) * 2
    assert last[Stage.LOADING_EXAMPLES][0] == last[Stage.LOADING_EXAMPLES][1] > 0
    for stage in (Stage.LOGIT_LENS, Stage.HISTOGRAMS, Stage.TOKEN_AGGREGATION):
        assert last[stage] == (n, n)
    assert [d for s, d, _ in events if s is Stage.LOGIT_LENS] == [40, 80, 96]


def test_dashboards_come_in_chunks_in_feature_order(inputs, reference) -> None:
    chunks = list(compute_dashboards(inputs, PARAMS, batch_size=BATCH, chunk_size=25))
    assert [len(c) for c in chunks] == [25, 25, 25, 21]
    assert flatten(chunks) == reference


def test_a_feature_subset_equals_the_same_features_of_a_full_run(inputs, reference) -> None:
    subset = [70, 3, 1, 0, 41]
    got = flatten(compute_dashboards(inputs, PARAMS, features=subset, batch_size=BATCH))
    expected = [reference[f] for f in sorted(subset)]
    # The logit-lens matmul over another feature chunk may round the last float32 bit otherwise.
    for mine, theirs in zip(got, expected, strict=True):
        for ours_side, ref_side in (
            (mine.top_positive_logits, theirs.top_positive_logits),
            (mine.top_negative_logits, theirs.top_negative_logits),
        ):
            assert [e.token_id for e in ours_side] == [e.token_id for e in ref_side]
            assert [e.value for e in ours_side] == pytest.approx(
                [e.value for e in ref_side], rel=1e-5
            )
        assert mine.logit_histogram.counts == theirs.logit_histogram.counts
    assert [_without_logits(d) for d in got] == [_without_logits(d) for d in expected]


def _without_logits(dashboard: FeatureDashboard) -> FeatureDashboard:
    return replace(dashboard, top_positive_logits=[], top_negative_logits=[], logit_histogram=None)  # type: ignore[arg-type]


def test_positions_are_global_across_row_ranges(inputs) -> None:
    config = state_config(PARAMS, tiny.SPECIAL)
    part = run_activation_pass(inputs, config, torch.arange(5), rows=range(40, 48), batch_size=3)
    positions = sample_position(part.state.sample_keys).flatten().tolist()
    positions += top_position(part.state.top_keys).flatten().tolist()
    rows = {p // tiny.N_CTX for p in positions if p >= 0}
    assert rows and rows <= set(range(40, 48))


def test_state_size_does_not_grow_with_the_number_of_tokens(inputs) -> None:
    config = state_config(replace(PARAMS, aggregate_all_tokens=False), tiny.SPECIAL)
    features = torch.arange(inputs.encoder.d_sae)
    small = run_activation_pass(inputs, config, features, rows=range(0, 8), batch_size=BATCH)
    large = run_activation_pass(inputs, config, features, batch_size=BATCH)
    shapes = {k: v.shape for k, v in small.state.tensors().items()}
    assert shapes == {k: v.shape for k, v in large.state.tensors().items()}


class FlakyEncoder:
    """Raises out-of-memory when encoding features from ``first_failing`` on in batches of more
    than ``max_rows`` rows: one thread's part of a batch fails after the other's has folded."""

    def __init__(self, encoder, max_rows: int, first_failing: int) -> None:
        self.encoder, self.max_rows, self.first_failing = encoder, max_rows, first_failing

    def __getattr__(self, name: str):
        return getattr(self.encoder, name)

    def encode_features(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.max_rows * tiny.N_CTX and int(features[-1]) >= self.first_failing:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.encoder.encode_features(x, features)


def assert_same_state(got, expected) -> None:
    assert got.token_count == expected.token_count
    mine, theirs = got.tensors(), expected.tensors()
    assert mine.keys() == theirs.keys()
    for name, tensor in theirs.items():
        assert mine[name].dtype == tensor.dtype and torch.equal(mine[name], tensor), name


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("features", [None, range(10, 61)], ids=["all", "subset"])
def test_the_pass_on_several_threads_equals_one_thread(inputs, threads, features) -> None:
    config = state_config(PARAMS, tiny.SPECIAL)  # with token totals
    feats = torch.arange(inputs.encoder.d_sae) if features is None else torch.tensor(features)
    rows = range(4, tiny.ROWS)

    def run(n: int):
        return run_activation_pass(inputs, config, feats, rows=rows, batch_size=7, threads=n)

    one = run(1)
    assert_same_state(run(threads).state, one.state)
    assert torch.get_num_threads() == 1  # this thread's torch threads are as they were


def test_an_out_of_memory_part_on_several_threads_leaves_the_state_as_it_was(inputs) -> None:
    config = state_config(PARAMS, tiny.SPECIAL)
    features = torch.arange(inputs.encoder.d_sae)
    flaky = replace(inputs, encoder=FlakyEncoder(inputs.encoder, BATCH, first_failing=60))
    got = run_activation_pass(flaky, config, features, batch_size=4 * BATCH, threads=2)
    expected = run_activation_pass(inputs, config, features, batch_size=BATCH, threads=1)
    assert got.batch_size == BATCH
    assert_same_state(got.state, expected.state)


def test_a_pass_on_several_threads_resumes_where_it_was_cancelled(inputs, tmp_path) -> None:
    config = state_config(PARAMS, tiny.SPECIAL)
    features = torch.arange(inputs.encoder.d_sae)
    checkpoint = Checkpointing(tmp_path / "pass.safetensors", every_seconds=3600.0)
    cancel = threading.Event()

    def stop(stage: Stage, done: int, total: int, message: str) -> None:
        if done == 3 * BATCH * tiny.N_CTX:
            cancel.set()

    with pytest.raises(Cancelled):
        run_activation_pass(inputs, config, features, batch_size=BATCH, checkpoint=checkpoint,
                            progress=stop, cancel=cancel, threads=2)  # fmt: skip
    resumed: list[int] = []

    def record(stage: Stage, done: int, total: int, message: str) -> None:
        resumed.append(done)

    again = run_activation_pass(inputs, config, features, batch_size=BATCH, checkpoint=checkpoint,
                                progress=record, threads=2)  # fmt: skip
    assert resumed[0] == 3 * BATCH * tiny.N_CTX
    expected = run_activation_pass(inputs, config, features, batch_size=BATCH, threads=1)
    assert_same_state(again.state, expected.state)
