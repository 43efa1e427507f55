"""The fine grid (quantiles, snapped histograms) and the integer keys, against numpy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from mistudio_common.dashboard import BinScale
from mistudio_compute.dashboards import keys as K
from mistudio_compute.dashboards.grid import FineGrid, binned, ideal_edges, quantiles, snap_to_grid

from tests.reference import dense_dashboards as ref

GRID = FineGrid()
LEVELS = (0.0, 0.01, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0)


def grid_state(rows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hist [F, NB], vmin [F], vmax [F]) of positive float32 values per feature."""
    edges = GRID.edges()
    hist = torch.zeros((len(rows), GRID.n_buckets), dtype=torch.int64)
    vmin = torch.full((len(rows),), torch.inf)
    vmax = torch.zeros(len(rows))
    for i, r in enumerate(rows):
        v = torch.from_numpy(r.astype(np.float32))
        if len(v):
            hist[i] += torch.bincount(GRID.bucket(v, edges), minlength=GRID.n_buckets)
            vmin[i], vmax[i] = v.min(), v.max()
    return hist, vmin, vmax


def sample_rows(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [
        rng.lognormal(mean=-1.0, sigma=2.0, size=5000),  # spans ~6 decades
        rng.exponential(0.3, size=777),
        rng.uniform(2.0, 2.001, size=50),  # narrower than one fine bucket
        np.array([0.7]),
        rng.lognormal(mean=0.0, sigma=0.1, size=3),
        np.array([], dtype=np.float64),
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_quantiles_are_within_the_reported_bound_of_numpy(seed: int) -> None:
    rows = [r.astype(np.float32) for r in sample_rows(seed)]
    hist, vmin, vmax = grid_state(rows)
    est, err = quantiles(GRID, hist.cumsum(1), vmin, vmax, LEVELS)
    for i, r in enumerate(rows):
        if len(r) == 0:
            assert err[i] == 0 and (est[i] == 0).all()
            continue
        assert float(err[i]) <= GRID.relative_error + 1e-12  # all values inside [1e-5, 1e5)
        exact = np.quantile(r.astype(np.float64), LEVELS)
        assert np.all(np.abs(est[i].numpy() - exact) <= float(err[i]) * exact * (1 + 1e-9))


def test_quantile_bound_widens_honestly_outside_the_grid_range() -> None:
    r = np.array([1e-9, 2e-9, 3e-7, 1e-6, 5e-6, 0.5, 2e6, 3e6], dtype=np.float32)
    hist, vmin, vmax = grid_state([r])
    est, err = quantiles(GRID, hist.cumsum(1), vmin, vmax, LEVELS)
    assert float(err[0]) > GRID.relative_error
    exact = np.quantile(r.astype(np.float64), LEVELS)
    assert np.all(np.abs(est[0].numpy() - exact) <= float(err[0]) * exact * (1 + 1e-9))


@pytest.mark.parametrize("scale", [BinScale.LOG, BinScale.LINEAR])
@pytest.mark.parametrize("bins", [20, 50, 100])
def test_display_histogram_counts_are_exact_for_the_reported_edges(
    scale: BinScale, bins: int
) -> None:
    rows = [r.astype(np.float32) for r in sample_rows(7)]
    hist, vmin, vmax = grid_state(rows)
    inner = snap_to_grid(GRID, ideal_edges(vmin, vmax, bins, scale), vmin, vmax)
    shown = binned(GRID, hist.cumsum(1), vmin, vmax, inner)
    for r, (edges, counts) in zip(rows, shown, strict=True):
        if len(r) == 0:
            assert (edges, counts) == ([], [])
            continue
        assert edges[0] == r.min() and edges[-1] == r.max()
        assert all(a <= b for a, b in itertools.pairwise(edges))
        assert len(set(edges[1:-1])) == len(edges) - 2
        assert 1 <= len(counts) <= bins
        assert counts == ref.histogram_counts(r, edges)


def test_log_edges_follow_the_requested_spacing() -> None:
    r = np.geomspace(1e-3, 10.0, 4000).astype(np.float32)
    hist, vmin, vmax = grid_state([r])
    inner = snap_to_grid(GRID, ideal_edges(vmin, vmax, 40, BinScale.LOG), vmin, vmax)
    ((edges, counts),) = binned(GRID, hist.cumsum(1), vmin, vmax, inner)
    assert len(counts) == 40
    ratios = np.diff(np.log10(edges))
    assert np.allclose(ratios, 0.1, atol=1 / GRID.per_decade)  # 4 decades / 40 bins


def test_top_keys_order_by_value_then_earlier_position() -> None:
    values = torch.tensor([0.5, 2.0, 2.0, 1e-30, 3.4e38])
    positions = torch.tensor([7, 9, 3, 1, (1 << 32) - 1])
    keys = K.top_key(values, positions)
    assert keys.argsort(descending=True).tolist() == [4, 2, 1, 0, 3]
    assert torch.equal(K.top_value(keys), values)
    assert torch.equal(K.top_position(keys), positions)


def test_sample_keys_match_the_reference_hash() -> None:
    positions = torch.tensor([0, 1, 5, 1 << 31, (1 << 32) - 1, 123456789])
    for feature in (0, 7, 131071):
        got = K.sample_key(torch.full_like(positions, feature), positions)
        assert got.tolist() == ref.sample_priority(feature, positions.numpy()).tolist()
        assert torch.equal(K.sample_position(got), positions)


def test_window_hash_is_equal_exactly_for_equal_windows() -> None:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 3, (40, 12), generator=g)  # small vocabulary: many equal windows
    h = K.window_hash(tokens, left=2, right=1)
    padded = torch.nn.functional.pad(tokens, (2, 1), value=-1)
    windows = padded.unfold(1, 4, 1).reshape(-1, 4)  # [rows * T, 4]
    same_window = (windows[:, None] == windows[None]).all(-1)
    assert torch.equal(h.view(-1)[:, None] == h.view(-1)[None], same_window)


def test_segment_top_matches_a_sort_per_segment() -> None:
    g = torch.Generator().manual_seed(1)
    seg = torch.randint(0, 6, (200,), generator=g)
    keys = torch.randperm(1000, generator=g)[:200]
    got, idx = K.segment_top(seg, keys, 7, 5, largest=True, fill=-1)
    for s in range(7):
        want = sorted(keys[seg == s].tolist(), reverse=True)[:5]
        assert got[s].tolist() == want + [-1] * (5 - len(want))
        assert keys[idx[s][idx[s] >= 0]].tolist() == want


@pytest.mark.parametrize("w", [0, 1, 3, 8])
def test_peaks_match_the_dense_reference_with_many_ties(w: int) -> None:
    from mistudio_compute.dashboards.state import _is_peak

    rng = np.random.default_rng(w)
    t, n_rows, n_feat = 12, 5, 4
    v = rng.integers(0, 4, size=(n_feat, n_rows, t)).astype(np.float32)  # 0 = inactive
    f, row, col = np.nonzero(v)  # sorted by (feature, row, position)
    got = _is_peak(torch.from_numpy(f), torch.from_numpy(row * t + col),
                   torch.from_numpy(v[f, row, col]), t, n_rows * t, w)  # fmt: skip
    want = [ref.is_peak(v[a, b], c, w) for a, b, c in zip(f, row, col, strict=True)]
    assert got.tolist() == want


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # numpy's path, torch's path
def test_active_entries_are_positive_non_special_values_by_feature_then_position(
    dtype: torch.dtype,
) -> None:
    from mistudio_compute.dashboards.state import _active_entries

    rng = np.random.default_rng(3)
    dense = rng.normal(size=(40, 7)).astype(np.float32)  # [N, F], half of it positive
    dense[5, 2], dense[9, 4], dense[11, 0] = np.nan, np.inf, -0.0
    special = rng.random(40) < 0.2  # [N]
    f, n, val = _active_entries(torch.from_numpy(dense).to(dtype), torch.from_numpy(special))
    active = (dense > 0) & ~special[:, None]
    want_f, want_n = np.nonzero(active.T)  # by feature, then position
    assert f.tolist() == want_f.tolist() and n.tolist() == want_n.tolist()
    assert val.dtype == torch.float32 and val.tolist() == dense[want_n, want_f].tolist()
