"""Heuristic feature explanations from top activations: which tokens a feature fires on.

These are *not* LLM explanations. For every live feature we take its ``top_n`` strongest
activations in the corpus and count the token at each one (and the token before it). The
description lists the most frequent ones with their shares, e.g.
``[top-tokens heuristic] fires on " park" (62%), " garden" (20%)``; a second explanation,
``fires after " the" (90%)``, is added when the preceding token is that consistent. ``score`` is
the share of the top activations the listed tokens cover (0..1), a coverage rather than an
LLM-judged score. Method ``mistudio_top-tokens``, explainer model "".
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch

from mistudio_compute.token_text import TokenizerAdapter, vocab_display_strings
from mistudio_compute.tokens import TokenDataset
from mistudio_compute.training.activations import TokenActivations

METHOD = "mistudio_top-tokens"
EXPLAINER_MODEL = ""
PREFIX = "[top-tokens heuristic]"


@dataclass(frozen=True)
class Explanation:
    """One row for the store's ``Explanation`` (and Neuronpedia's), as plain JSON values."""

    feature_index: int
    description: str
    method: str = METHOD
    explainer_model: str = EXPLAINER_MODEL
    score: float = 0.0


@dataclass(frozen=True)
class TopActivations:
    """Each feature's strongest activations over the kept tokens."""

    values: torch.Tensor  # [top_n, d_sae], descending; 0 where a feature fired fewer times
    index: torch.Tensor  # [top_n, d_sae], into TokenActivations


@torch.no_grad()
def top_activations(
    encode: Callable[[torch.Tensor], torch.Tensor],
    acts: TokenActivations,
    d_sae: int,
    top_n: int = 50,
    batch_size: int = 8192,
) -> TopActivations:
    """One pass over the activations, keeping a running top-``top_n`` per feature."""
    values = torch.zeros(0, d_sae)
    index = torch.zeros(0, d_sae, dtype=torch.long)
    for start in range(0, len(acts), batch_size):
        f = encode(acts.acts[start : start + batch_size])  # [batch, d_sae]
        batch_index = torch.arange(start, start + len(f))[:, None].expand(-1, d_sae)
        values, pick = torch.cat([values, f]).topk(min(top_n, len(values) + len(f)), dim=0)
        index = torch.cat([index, batch_index]).gather(0, pick)
    return TopActivations(values, index)


def explain_features(
    top: TopActivations,
    acts: TokenActivations,
    dataset: TokenDataset,
    tokenizer: TokenizerAdapter,
    *,
    max_tokens: int = 4,
    min_share: float = 0.05,
    context_share: float = 0.5,
) -> list[Explanation]:
    """Explanations for every feature with at least one activation (module docstring)."""
    strings = vocab_display_strings(tokenizer)
    tokens = dataset.tokens
    explanations: list[Explanation] = []
    for feature in range(top.values.shape[1]):
        live = top.values[:, feature] > 0
        picked = top.index[live, feature]
        if len(picked) == 0:
            continue
        rows, positions = acts.rows[picked].numpy(), acts.positions[picked].numpy()
        current = Counter(strings[t] for t in tokens[rows, positions])
        listed = [(s, n / len(picked)) for s, n in current.most_common(max_tokens)]
        listed = [(s, share) for s, share in listed if share >= min_share] or listed[:1]
        explanations.append(
            Explanation(
                feature,
                f"{PREFIX} fires on {_shares(listed)}",
                score=round(sum(share for _, share in listed), 4),
            )
        )
        previous = Counter(strings[t] for t in tokens[rows, np.maximum(positions - 1, 0)])
        before, count = previous.most_common(1)[0]
        if count / len(picked) >= context_share:
            explanations.append(
                Explanation(
                    feature,
                    f"{PREFIX} fires after {_shares([(before, count / len(picked))])}",
                    score=round(count / len(picked), 4),
                )
            )
    return explanations


def _shares(items: list[tuple[str, float]]) -> str:
    return ", ".join(f"{_quote(s)} ({share:.0%})" for s, share in items)


def _quote(text: str) -> str:
    return '"' + text.replace("\n", "\\n").replace('"', '\\"') + '"'


def explanations_json(explanations: list[Explanation]) -> list[dict[str, object]]:
    return [asdict(e) for e in explanations]


def feature_examples(
    top: TopActivations,
    acts: TokenActivations,
    dataset: TokenDataset,
    tokenizer: TokenizerAdapter,
    feature: int,
    *,
    n: int = 5,
    before: int = 8,
    after: int = 2,
) -> list[str]:
    """The feature's top ``n`` contexts as text, the activating token in [[brackets]]."""
    strings = vocab_display_strings(tokenizer)
    lines = []
    for value, i in zip(
        top.values[:n, feature].tolist(), top.index[:n, feature].tolist(), strict=True
    ):
        if value <= 0:
            break
        row, pos = int(acts.rows[i]), int(acts.positions[i])
        ids = dataset.tokens[row]
        left = "".join(strings[t] for t in ids[max(0, pos - before) : pos])
        right = "".join(strings[t] for t in ids[pos + 1 : pos + 1 + after])
        text = f"{left}[[{strings[ids[pos]]}]]{right}".replace("\n", "\\n")
        lines.append(f"{value:6.2f}  {text}")
    return lines
