"""Hook activations of a token corpus, flattened to the tokens an SAE should learn from.

BOS/EOS positions are left out: their residual stream is an outlier shared by every row, and a
feature spent on it explains nothing about the text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mistudio_compute.model_access import LoadedModel, capture_hook
from mistudio_compute.tokens import TokenDataset


@dataclass(frozen=True)
class TokenActivations:
    """Activations of the kept tokens and where each came from."""

    acts: torch.Tensor  # [n_kept, d_in] float32
    rows: torch.Tensor  # [n_kept] row of each kept token in the dataset
    positions: torch.Tensor  # [n_kept] position in that row

    def __len__(self) -> int:
        return len(self.acts)


def special_ids(loaded: LoadedModel) -> set[int]:
    return {
        i for i in (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id) if i is not None
    }


def collect_activations(
    loaded: LoadedModel,
    dataset: TokenDataset,
    hook_name: str,
    *,
    batch_rows: int = 64,
) -> TokenActivations:
    """Runs every row to ``hook_name`` and keeps the non-special tokens' activations."""
    skip = torch.tensor(sorted(special_ids(loaded)), dtype=torch.long)
    chunks: list[torch.Tensor] = []
    for _, tokens in dataset.iter_batches(batch_rows):
        act = capture_hook(loaded, tokens, hook_name)
        chunks.append(act.float().cpu()[~torch.isin(tokens, skip)])  # [kept, d_in]
    keep = ~np.isin(dataset.tokens, skip.numpy())  # [rows, context]
    rows, positions = np.nonzero(keep)
    return TokenActivations(
        acts=torch.cat(chunks),
        rows=torch.from_numpy(rows.astype(np.int64)),
        positions=torch.from_numpy(positions.astype(np.int64)),
    )
