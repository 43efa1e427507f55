"""Top-token explanations name the tokens a feature fires on, and label themselves heuristic."""

from __future__ import annotations

import numpy as np
import torch
from mistudio_compute.tokens import TokenDataset
from mistudio_compute.training.activations import TokenActivations
from mistudio_compute.training.explanations import (
    METHOD,
    PREFIX,
    explain_features,
    feature_examples,
    top_activations,
)

from tests.compute.builders import tiny_tokenizer


def setup() -> tuple[TokenDataset, TokenActivations]:
    """Rows of tokens; the 'activation' of a token is its one-hot id (so feature i = token i)."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 64, size=(4, 16)).astype(np.int32)
    tokens[:, 0] = 1
    tokens[:, 5] = 30  # after 29 everywhere
    tokens[:, 4] = 29
    dataset = TokenDataset.from_array(tokens, "t", prepend_bos=True)
    rows, positions = np.nonzero(tokens != 1)
    acts = torch.nn.functional.one_hot(torch.from_numpy(tokens[rows, positions]).long(), 64)
    return dataset, TokenActivations(
        acts.float(), torch.from_numpy(rows), torch.from_numpy(positions)
    )


def test_a_token_feature_is_explained_by_its_token_and_context() -> None:
    dataset, acts = setup()
    tokenizer = tiny_tokenizer()
    top = top_activations(lambda x: x, acts, d_sae=64, top_n=4, batch_size=10)
    explanations = explain_features(top, acts, dataset, tokenizer)
    about_30 = [e for e in explanations if e.feature_index == 30]
    piece_30, piece_29 = (
        tokenizer.piece(30).replace("▁", " "),
        tokenizer.piece(29).replace("▁", " "),
    )
    assert about_30[0].description == f'{PREFIX} fires on "{piece_30}" (100%)'
    assert about_30[1].description == f'{PREFIX} fires after "{piece_29}" (100%)'
    assert all(e.method == METHOD and e.explainer_model == "" for e in explanations)
    assert about_30[0].score == 1.0


def test_features_that_never_fire_get_no_explanation() -> None:
    dataset, acts = setup()
    top = top_activations(lambda x: x, acts, d_sae=64, top_n=4)
    fired = {e.feature_index for e in explain_features(top, acts, dataset, tiny_tokenizer())}
    assert fired == set(np.unique(dataset.tokens[dataset.tokens != 1]).tolist())


def test_examples_mark_the_activating_token() -> None:
    dataset, acts = setup()
    top = top_activations(lambda x: x, acts, d_sae=64, top_n=4)
    lines = feature_examples(top, acts, dataset, tiny_tokenizer(), 30, n=2)
    assert len(lines) == 2 and all("[[" in line and "]]" in line for line in lines)
