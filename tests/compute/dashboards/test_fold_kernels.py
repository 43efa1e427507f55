"""The compiled CPU fold (fold_kernels) gives the torch fold's state bit for bit."""

from __future__ import annotations

import pytest
import torch
from mistudio_compute.dashboards import fold_kernels, keys
from mistudio_compute.dashboards.keys import EMPTY_SAMPLE
from mistudio_compute.dashboards.state import Fold, PassState, StateConfig, dense_entries

SPECIAL = (0, 1)
ROWS, T, F = 6, 7, 9  # short rows: most windows cross a row's edge


def batch(seed: int, rows: int = ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """acts [rows * T, F] and tokens [rows, T] with ties, special tokens, values off the grid
    (subnormal, below and above it), a feature that never fires and ~25% active entries."""
    g = torch.Generator().manual_seed(seed)
    levels = torch.tensor([0.5, 1.0, 1.0, 2.0, 3.0, 1e-45, 1e-7, 2e5, 0.0, 0.0])
    acts = levels[torch.randint(0, len(levels), (rows * T, F), generator=g)]
    acts = acts * (torch.rand(rows * T, F, generator=g) < 0.3)  # most entries inactive
    acts[torch.rand(rows * T, F, generator=g) < 0.05] = -1.0  # negative: not firing
    acts[:, 2] = 0  # a feature with no active entries
    tokens = torch.randint(0, 6, (rows, T), generator=g)  # few ids: repeated windows
    return acts, tokens


def fold(state: PassState, acts: torch.Tensor, tokens: torch.Tensor, first_row: int) -> Fold:
    """The fold of a batch's dense activations acts [rows * T, F] (as ``PassState.update``)."""
    batch = state.batch_tokens(tokens)
    entries = dense_entries(acts, batch.special, state.config.grid)
    return state.fold(entries, tokens, first_row, batch)


def states(config: StateConfig, batches: list[tuple[torch.Tensor, torch.Tensor]], features):
    """The state of folding the batches (rows one after another), compiled and with torch."""
    out = []
    for compiled in (True, False):
        state = PassState.empty(config, features, T, torch.device("cpu"))
        first_row = 0
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(fold_kernels, "applies", lambda acts, compiled=compiled: compiled)
            for acts, tokens in batches:
                folded = fold(state, acts, tokens, first_row)
                assert folded.compiled is compiled
                folded.commit()
                first_row += tokens.shape[0]
        out.append(state)
    return out


def assert_bitwise_equal(a: PassState, b: PassState) -> None:
    for name, x in a.tensors_by_feature().items():
        y = getattr(b, name)
        if x.is_floating_point():  # bits, so that -0.0 / 0.0 or NaN differences show
            x, y = x.view(torch.int32), y.view(torch.int32)
        assert torch.equal(x, y), name


CONFIGS = {
    "top and sample": StateConfig(n_top=3, n_sample=4, context_left=2, context_right=1,
                                  special_ids=SPECIAL),
    "wide context": StateConfig(n_top=2, n_sample=2, context_left=9, context_right=8,
                                special_ids=SPECIAL),
    "no context": StateConfig(n_top=4, n_sample=3, context_left=0, context_right=0,
                              special_ids=SPECIAL),
    "no top": StateConfig(n_top=0, n_sample=5, context_left=1, context_right=1,
                          special_ids=SPECIAL),
    "no sample": StateConfig(n_top=5, n_sample=0, context_left=1, context_right=2,
                             special_ids=SPECIAL),
    "statistics only": StateConfig(n_top=0, n_sample=0, context_left=1, context_right=1,
                                   special_ids=SPECIAL),
}  # fmt: skip


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS.keys())
def test_compiled_fold_equals_torch_fold_bit_for_bit(config: StateConfig) -> None:
    batches = [batch(seed) for seed in range(8)]
    compiled, torch_ops = states(config, batches, torch.arange(100, 100 + F))
    assert int(compiled.count.sum()) > 0
    assert_bitwise_equal(compiled, torch_ops)


def test_empty_and_all_special_batches_fold_alike() -> None:
    config = CONFIGS["top and sample"]
    silent = (torch.zeros(ROWS * T, F), torch.randint(0, 6, (ROWS, T)))
    acts, _ = batch(1)
    all_special = (acts, torch.zeros(ROWS, T, dtype=torch.int64))
    batches = [silent, batch(0), all_special, batch(2, rows=1), silent]
    compiled, torch_ops = states(config, batches, torch.arange(F))
    assert_bitwise_equal(compiled, torch_ops)


def test_full_samples_take_only_smaller_keys_alike() -> None:
    """Once the samples are full, entries enter a row in the middle and push others out."""
    config = StateConfig(n_top=2, n_sample=2, context_left=1, context_right=1, special_ids=SPECIAL)
    batches = [batch(seed, rows=20) for seed in range(6)]
    compiled, torch_ops = states(config, batches, torch.tensor([5, 3, 2**31, 0, 7, 1, 8, 9, 4]))
    alive = torch.arange(F) != 2
    assert bool((compiled.sample_keys[alive] != EMPTY_SAMPLE).all())
    assert_bitwise_equal(compiled, torch_ops)


@pytest.mark.parametrize("compiled", [True, False], ids=["compiled", "torch"])
def test_entering_samples_take_evicted_slots_and_kept_ones_stay(compiled: bool) -> None:
    """A fold writes only the entries that enter a sample, each into an empty slot or the slot
    of an entry it evicts: kept entries stay where they are, and a row's threshold is its
    largest key."""
    config = StateConfig(n_top=0, n_sample=3, context_left=1, context_right=1, special_ids=SPECIAL)
    state = PassState.empty(config, torch.arange(F), T, torch.device("cpu"))
    evicted = 0
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fold_kernels, "applies", lambda acts: compiled)
        for seed in range(6):
            before = state.sample_keys.clone()
            fold(state, *batch(seed, rows=4), first_row=4 * seed).commit()
            after = state.sample_keys
            kept = (before[:, :, None] == after[:, None, :]).any(2) & (before != EMPTY_SAMPLE)
            assert torch.equal(after[kept], before[kept])
            assert torch.equal(state.sample_threshold, after.amax(1))
            evicted += int(((before != EMPTY_SAMPLE) & ~kept).sum())
    assert evicted > 0


@pytest.mark.parametrize(("left", "right"), [(16, 8), (0, 0), (3, 0), (0, 20)])
def test_compiled_window_hash_equals_the_torch_hash_bit_for_bit(left: int, right: int) -> None:
    g = torch.Generator().manual_seed(left * 31 + right)
    tokens = torch.randint(0, 2**31, (5, 12), generator=g)  # large ids; windows beyond the row
    tokens[1] = torch.randint(0, 3, (12,), generator=g)  # a small vocabulary: equal windows
    expected = keys.window_hash(tokens, left, right)
    assert torch.equal(fold_kernels.window_hash(tokens, left, right), expected)


def test_float32_cpu_activations_fold_compiled() -> None:
    acts = torch.zeros(2, 3)
    assert fold_kernels.applies(acts)
    assert not fold_kernels.applies(acts.double())


def test_a_better_peak_in_a_kept_window_replaces_it_alike() -> None:
    """A later batch with the same tokens has the same windows: its larger peak takes the place
    of the kept one in that window, whose smaller one is dropped (not kept beside it)."""
    config = StateConfig(n_top=3, n_sample=0, context_left=1, context_right=1, special_ids=())
    tokens = torch.tensor([[3, 4, 5, 3, 4, 5, 2]])
    acts = torch.zeros(T, F)
    acts[1, 0], acts[5, 0] = 1.0, 2.0  # two peaks of feature 0 in different windows
    later = acts.clone()
    later[1, 0] = 4.0  # the window at position 1 again, with a larger peak
    compiled, torch_ops = states(config, [(acts, tokens), (later, tokens)], torch.arange(F))
    assert_bitwise_equal(compiled, torch_ops)
    values = compiled.top_windows[0, :, 1].tolist()  # each example's own value
    assert values == [4.0, 2.0, 0.0]  # the first 2.0 (earlier) and no third example
