"""Logit lens: exact top/bottom tokens with id tie-breaks, chunking, histograms over the vocab."""

from __future__ import annotations

import numpy as np
import torch
from mistudio_compute.dashboards.logit_lens import LogitLens, logit_lens

from tests.reference import dense_dashboards as ref


class Lens:
    def __init__(self, w_dec: torch.Tensor, w_u: torch.Tensor) -> None:
        self.w_dec, self.unembedding = w_dec, w_u

    def directions(self, features: torch.Tensor) -> torch.Tensor:
        return self.w_dec[features]


def random_lens(n_feat: int = 30, d: int = 16, vocab: int = 300, seed: int = 0) -> Lens:
    g = torch.Generator().manual_seed(seed)
    return Lens(torch.randn(n_feat, d, generator=g), torch.randn(d, vocab, generator=g))


def test_top_and_bottom_tokens_match_the_dense_reference() -> None:
    lens = random_lens()
    got = logit_lens(lens, torch.arange(30), k=12, bins=20)
    pos, neg, logits = ref.logit_lens(lens.w_dec.numpy(), lens.unembedding.numpy(), 12)
    assert got.pos_ids.tolist() == pos and got.neg_ids.tolist() == neg
    np.testing.assert_allclose(got.pos_values.numpy(), np.take_along_axis(logits, np.array(pos), 1),
                               atol=1e-5)  # fmt: skip


def test_ties_go_to_the_lower_token_id_including_signed_zeros() -> None:
    w_u = torch.tensor([[3.0, 1.0, 3.0, -2.0, 0.0, -2.0, -0.0, 1.0, 3.0, -2.0]])
    lens = Lens(torch.tensor([[1.0], [-1.0]]), w_u)
    got = logit_lens(lens, torch.tensor([0, 1]), k=10, bins=10)
    assert got.pos_ids[0].tolist() == [0, 2, 8, 1, 7, 4, 6, 3, 5, 9]
    assert got.neg_ids[0].tolist() == [3, 5, 9, 4, 6, 1, 7, 0, 2, 8]
    assert got.pos_ids[1].tolist() == got.neg_ids[0].tolist()


def test_chunked_equals_unchunked() -> None:
    lens = random_lens(n_feat=50, vocab=257)
    whole = logit_lens(lens, torch.arange(50), k=10, bins=16, max_elements=1 << 30)
    chunked = logit_lens(lens, torch.arange(50), k=10, bins=16, max_elements=257 * 3)
    assert torch.equal(whole.pos_ids, chunked.pos_ids)
    assert torch.equal(whole.neg_ids, chunked.neg_ids)
    assert torch.equal(whole.hist_counts.sum(1), chunked.hist_counts.sum(1))
    # BLAS may round the last bit differently for another number of rows
    torch.testing.assert_close(whole.pos_values, chunked.pos_values, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(whole.hist_edges, chunked.hist_edges, rtol=0, atol=1e-5)


def test_a_features_logits_do_not_depend_on_the_features_beside_it() -> None:
    lens = random_lens(n_feat=50, vocab=257)
    whole = logit_lens(lens, torch.arange(50), k=10, bins=16)
    for part in (torch.tensor([7]), torch.arange(3, 50), torch.arange(0, 50, 7)):
        alone = logit_lens(lens, part, k=10, bins=16)
        for name in LogitLens.__slots__:
            assert torch.equal(getattr(alone, name), getattr(whole, name)[part]), name


def test_histogram_covers_the_vocabulary_with_exact_counts_for_its_edges() -> None:
    lens = random_lens(n_feat=8, vocab=1000)
    got = logit_lens(lens, torch.arange(8), k=10, bins=37)
    logits = (lens.w_dec @ lens.unembedding).numpy()
    for i in range(8):
        edges = got.hist_edges[i].tolist()
        assert edges[0] == logits[i].min() and edges[-1] == logits[i].max()
        assert got.hist_counts[i].tolist() == ref.histogram_counts(logits[i], edges)
        assert int(got.hist_counts[i].sum()) == 1000


def test_a_zero_direction_gets_one_centred_bin_like_numpy() -> None:
    lens = Lens(torch.zeros(1, 4), torch.randn(4, 50))
    got = logit_lens(lens, torch.tensor([0]), k=10, bins=10)
    counts, edges = np.histogram(np.zeros(50), bins=10)
    assert got.hist_counts[0].tolist() == counts.tolist()
    np.testing.assert_allclose(got.hist_edges[0].numpy(), edges, atol=1e-6)
    assert got.pos_ids[0].tolist() == list(range(10)) and int(got.nonzero[0]) == 0
