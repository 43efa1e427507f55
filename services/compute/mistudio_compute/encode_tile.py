"""The unit an encoder hands its activations over in, tile by tile (``Sae.encode_tiles``), to the
pass (``dashboards``): a module of its own so that neither package imports the other for it."""

from __future__ import annotations

from typing import NamedTuple

import torch


class EncodeTile(NamedTuple):
    """Columns ``columns`` [C] of ``acts`` [R, W], the activations of input rows ``rows``, are
    the output features ``at`` [C] (ascending); an entry <= 0 is one that does not fire, not
    necessarily 0. Valid until the encoder's next tile is asked for: it reuses the buffer."""

    rows: slice
    acts: torch.Tensor  # [R, W]
    columns: torch.Tensor  # [C] int64
    at: torch.Tensor  # [C] int64
