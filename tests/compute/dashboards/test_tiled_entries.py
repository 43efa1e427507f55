"""The active entries a CPU pass takes from each encode tile (or computes tile by tile in its
scan) equal those of the dense activations, for every architecture, and the pass folds them
into the same state."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest
import torch
from mistudio_compute.adapters import SaeFeatures
from mistudio_compute.dashboards import blas, fold_kernels
from mistudio_compute.dashboards.activation_pass import run_activation_pass
from mistudio_compute.dashboards.grid import FineGrid
from mistudio_compute.dashboards.inputs import AffineEncoder, TileEncoder
from mistudio_compute.dashboards.params import state_config
from mistudio_compute.dashboards.state import (
    ActiveEntries,
    affine_entries,
    dense_entries,
    tiled_entries,
)
from mistudio_compute.encode_tile import EncodeTile
from mistudio_compute.sae import architectures, build_sae

from tests.compute.builders import sae_config, sae_weights
from tests.compute.dashboards import tiny
from tests.compute.dashboards.test_pass_lifecycle import PARAMS, assert_same_state

ARCHITECTURES = ["standard", "jumprelu", "topk", "gated"]
D_IN, D_SAE, K = 32, 1100, 8  # two full encode blocks and a partial one
ROWS = 2 * architectures.ENCODE_ROWS + 300  # two full row tiles and a ragged one
FEATURES = {
    "all": torch.arange(D_SAE),
    "shard across blocks": torch.arange(100, 1000),
    "partial last block": torch.arange(1030, 1100),
    "scattered, unsorted": torch.tensor([1099, 5, 700, 701, 3, 1024, 511, 512]),
}


def dense_reference(acts: torch.Tensor, special: torch.Tensor) -> ActiveEntries:
    """The entries of dense activations found with torch ops (no compiled kernel)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fold_kernels, "applies", lambda acts: False)
        return dense_entries(acts, special, FineGrid())


def assert_same_entries(got: ActiveEntries, expected: ActiveEntries) -> None:
    assert got.n_feat == expected.n_feat
    for name in ("f", "n", "val", "bucket"):
        mine, theirs = getattr(got, name), getattr(expected, name)
        assert mine.dtype == theirs.dtype and torch.equal(mine, theirs), name


@pytest.mark.parametrize("features", FEATURES.values(), ids=FEATURES.keys())
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_entries_taken_tile_by_tile_equal_those_of_the_dense_activations(
    arch: str, features: torch.Tensor
) -> None:
    sae = build_sae(sae_config(arch, D_IN, D_SAE, k=K), sae_weights(arch, D_IN, D_SAE, seed=5))
    g = torch.Generator().manual_seed(4)
    x = torch.randn(ROWS, D_IN, generator=g)
    special = torch.rand(ROWS, generator=g) < 0.1
    acts = sae.encode_features(x, features)  # [ROWS, F]
    expected = dense_reference(acts, special)
    assert 0 < len(expected.f) < acts.numel()  # both firing and silent entries

    tiled = tiled_entries(sae.encode_tiles(x, features), len(features), special, FineGrid())
    assert_same_entries(tiled, expected)
    assert_same_entries(dense_entries(acts, special, FineGrid()), expected)


AFFINE = ["standard", "jumprelu"]


@pytest.mark.parametrize("d_in", [D_IN, 300])  # 300: MKL sums d_in > 256 in parts
@pytest.mark.parametrize("features", FEATURES.values(), ids=FEATURES.keys())
@pytest.mark.parametrize("arch", AFFINE)
def test_entries_the_scan_encodes_itself_equal_those_of_the_dense_activations(
    arch: str, features: torch.Tensor, d_in: int
) -> None:
    sae = build_sae(sae_config(arch, d_in, D_SAE), sae_weights(arch, d_in, D_SAE, seed=5))
    g = torch.Generator().manual_seed(4)
    x = torch.randn(ROWS, d_in, generator=g)
    special = torch.rand(ROWS, generator=g) < 0.1
    expected = dense_reference(sae.encode_features(x, features), special)
    encode = sae.affine_encode(x)
    assert fold_kernels.runs_affine(encode) and encode is not None
    scratch = fold_kernels.EntryBuffer()
    got = affine_entries(encode, features, special, FineGrid(), scratch)
    assert_same_entries(got, expected)
    if len(features) == D_SAE:  # the buffer filled up within a tile, and the scan went on
        assert len(expected.f) > len(fold_kernels.EntryBuffer().arrays[0])


@pytest.mark.parametrize("arch", ["topk", "gated"])
def test_an_encode_that_is_not_an_affine_map_and_a_floor_says_so(arch: str) -> None:
    sae = build_sae(sae_config(arch, D_IN, D_SAE, k=K), sae_weights(arch, D_IN, D_SAE, seed=5))
    assert sae.affine_encode(torch.randn(3, D_IN)) is None
    assert not fold_kernels.runs_affine(None)


def test_the_scan_s_matmul_is_torch_s_own() -> None:
    """On this platform (as in CI) the pass computes its tiles in the scan: torch's BLAS is
    found, and its products, called as the scan calls it, are torch.mm's bits."""
    assert blas.sgemm_address() is not None
    sgemm = blas.find_sgemm()
    assert sgemm is not None
    g = torch.Generator().manual_seed(9)
    for m, n, k in ((512, 512, 64), (300, 88, 700), (1, 1, 1)):
        x, w = torch.randn(m, k, generator=g), torch.randn(k, n + 40, generator=g)
        assert torch.equal(torch.from_numpy(blas.row_major_product(sgemm, x, w, 40)), x @ w[:, 40:])


def test_a_scratch_buffer_reused_by_batches_gives_each_its_own_entries() -> None:
    sae = build_sae(
        sae_config("standard", D_IN, D_SAE), sae_weights("standard", D_IN, D_SAE, seed=5)
    )
    g, features, scratch = (
        torch.Generator().manual_seed(6),
        FEATURES["all"],
        fold_kernels.EntryBuffer(),
    )
    for rows in (ROWS, 7, ROWS):  # it grows in the first, is longer than the second needs
        x = torch.randn(rows, D_IN, generator=g)
        special = torch.rand(rows, generator=g) < 0.1
        expected = tiled_entries(sae.encode_tiles(x, features), D_SAE, special, FineGrid())
        got = tiled_entries(sae.encode_tiles(x, features), D_SAE, special, FineGrid(), scratch)
        assert_same_entries(got, expected)
    assert len(scratch.arrays[0]) > 1 << 16  # it grew once, and kept its size


def test_a_tile_naming_features_beyond_the_batch_is_refused() -> None:
    acts, every = torch.ones(4, 3), torch.arange(3)
    with pytest.raises(ValueError, match="out of range"):
        tiled_entries([(slice(0, 4), acts, every, every + 1)], 3, torch.zeros(4, dtype=torch.bool),
                      FineGrid())  # fmt: skip


class DenseOnly:
    """The same SAE offering only its dense encode (as an encoder without tiles does)."""

    def __init__(self, encoder: SaeFeatures) -> None:
        self.encoder = encoder
        self.d_sae, self.d_in, self.device = encoder.d_sae, encoder.d_in, encoder.device

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder.encode(x)

    def encode_features(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.encoder.encode_features(x, features)


class TilesOnly(DenseOnly):
    """The same SAE offering its tiles but not its encode as an affine map."""

    def encode_tiles(self, x: torch.Tensor, features: torch.Tensor) -> Iterator[EncodeTile]:
        return self.encoder.encode_tiles(x, features)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_a_pass_over_encode_tiles_equals_one_over_dense_activations(
    model, tokens, relu_sae, arch: str, threads: int
) -> None:
    d_sae = relu_sae.d_sae
    weights = sae_weights(arch, tiny.D_MODEL, d_sae, seed=7)
    cfg = sae_config(arch, tiny.D_MODEL, d_sae, hook_name=tiny.HOOK, k=K)
    tiled = SaeFeatures(build_sae(cfg, weights))
    assert isinstance(tiled, AffineEncoder) and not isinstance(DenseOnly(tiled), TileEncoder)
    assert not isinstance(TilesOnly(tiled), AffineEncoder)
    inputs = replace(tiny.make_inputs(model, relu_sae, tokens), encoder=tiled)
    config = state_config(PARAMS, tiny.SPECIAL)
    for features in (torch.arange(d_sae), torch.arange(5, d_sae - 3)):
        got, by_tiles, expected = (
            run_activation_pass(replace(inputs, encoder=encoder), config, features, batch_size=5,
                                threads=threads)
            for encoder in (tiled, TilesOnly(tiled), DenseOnly(tiled))
        )  # fmt: skip
        assert_same_state(got.state, expected.state)
        assert_same_state(by_tiles.state, expected.state)


def test_every_column_of_a_span_may_fire_and_zeros_of_either_sign_do_not() -> None:
    acts = torch.rand(3, 70) + 0.5  # row 0: every column fires, the 32nd included
    acts[1, ::2] = -0.0
    acts[1, 1::4] = 0.0
    acts[2, 31] = torch.finfo(torch.float32).tiny / 2  # subnormal: positive, so it fires
    special = torch.zeros(3, dtype=torch.bool)
    got = dense_entries(acts, special, FineGrid())
    assert got.compiled and len(got.f) == 70 + (70 - 35 - 18) + 70
    assert_same_entries(got, dense_reference(acts, special))
