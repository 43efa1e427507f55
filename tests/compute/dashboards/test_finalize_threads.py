"""Finalisation on several threads: the same chunks, bytes and progress as on one."""

from __future__ import annotations

import threading
from dataclasses import replace

import pytest
import torch
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio_common.dashboard import DashboardParams
from mistudio_common.errors import Cancelled
from mistudio_compute.dashboards import (
    Stage,
    finalize_dashboards,
    run_activation_pass,
    state_config,
)
from mistudio_compute.dashboards.examples import ExamplePlan, example_rows, plan_examples
from mistudio_compute.dashboards.params import quantile_groups
from mistudio_compute.dashboards.threads import in_order

from tests.compute.dashboards import tiny

PARAMS = DashboardParams(
    n_top_examples=6,
    n_quantile_groups=3,
    examples_per_quantile_group=2,
    context_left=3,
    context_right=2,
    histogram_bins=20,
)


@pytest.fixture(scope="module")
def inputs(model, relu_sae, tokens):
    return tiny.make_inputs(model, relu_sae, tokens)


@pytest.fixture(scope="module", params=[False, True], ids=["example-tokens", "all-tokens"])
def params(request) -> DashboardParams:
    return replace(PARAMS, aggregate_all_tokens=request.param)


@pytest.fixture(scope="module")
def state(inputs, params):
    config = state_config(params, tiny.SPECIAL)
    features = torch.arange(inputs.encoder.d_sae)
    return run_activation_pass(inputs, config, features, batch_size=8).state


def serialised(chunks) -> list[list[bytes]]:
    return [[d.SerializeToString(deterministic=True) for d in chunk] for chunk in chunks]


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("chunk_size", [7, 40])
def test_finalisation_on_several_threads_equals_one_thread(
    inputs, params, state, threads, chunk_size
) -> None:
    def run(n: int) -> list[list[bytes]]:
        return serialised(
            finalize_dashboards(state, inputs, params, chunk_size=chunk_size, threads=n)
        )

    one = run(1)
    assert run(threads) == one  # the same chunks, in order, byte for byte
    assert torch.get_num_threads() == 1  # this thread's torch threads are as they were


@pytest.mark.parametrize("threads", [2, 3])
def test_example_plan_in_feature_ranges_equals_the_whole_plan(params, state, threads) -> None:
    groups, per = quantile_groups(params), params.examples_per_quantile_group
    whole = plan_examples(state, groups, per)
    ranged = plan_examples(state, groups, per, threads)
    assert torch.equal(ranged.positions, whole.positions)
    assert torch.equal(ranged.windows, whole.windows)
    assert ranged.groups == whole.groups
    assert torch.get_num_threads() == 1


def test_example_rows_counts_each_row_of_the_chosen_positions_once() -> None:
    positions = torch.tensor([[0, 5, -1], [130, 7, 260]])  # rows 0, 0, 1, 0, 2 of 128 tokens
    plan = ExamplePlan(positions, torch.zeros(2, 3, 1), n_top=3, per_group=0, groups=[])
    assert example_rows(plan, seq_len=128) == 3


def test_finalisation_on_several_threads_reports_the_same_progress(inputs, params, state) -> None:
    def reports(n: int) -> list[tuple[Stage, int, int]]:
        events: list[tuple[Stage, int, int]] = []

        def record(stage: Stage, done: int, total: int, message: str) -> None:
            events.append((stage, done, total))

        for _ in finalize_dashboards(state, inputs, params, chunk_size=30, threads=n,
                                     progress=record):  # fmt: skip
            pass
        return events

    assert reports(2) == reports(1)


def test_cancelled_finalisation_on_several_threads_stops_between_chunks(
    inputs, params, state
) -> None:
    cancel = threading.Event()
    chunks: list[list[dpb.FeatureDashboard]] = []
    with pytest.raises(Cancelled):
        for chunk in finalize_dashboards(state, inputs, params, chunk_size=10, threads=2,
                                         cancel=cancel):  # fmt: skip
            chunks.append(chunk)
            cancel.set()
    assert [len(c) for c in chunks] == [10]
    assert torch.get_num_threads() == 1


def test_in_order_keeps_at_most_threads_calls_ahead_of_the_consumer() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def square(x: int) -> int:
        with lock:
            started.append(x)
        return x * x

    got = []
    for result in in_order(square, range(20), threads=3):
        with lock:
            assert len(started) <= len(got) + 1 + 3  # taken, this one, and three under way
        got.append(result)
    assert got == [x * x for x in range(20)]
