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


class AffineEncode(NamedTuple):
    """An encode a compiled scan can run itself, tile by tile (``fold_kernels.affine_entries``):
    feature j of row r fires where its pre-activation ``x_c[r] @ weight[:, j] + bias[j]`` (the
    matmul over column blocks of ``block`` and row tiles of ``rows``, the bias added to its
    result) is above ``floor[j]``, and its activation is that pre-activation. The scan calls
    the BLAS torch's matmul calls, so it gets ``encode_features``'s bits without handing a tile
    back to Python (a 16,384-feature pass has ~16,000 tiles)."""

    x_c: torch.Tensor  # [N, d_in] float32, C-contiguous
    weight: torch.Tensor  # [d_in, d_sae] float32, C-contiguous
    bias: torch.Tensor  # [d_sae]
    floor: torch.Tensor  # [d_sae] fires strictly above (0 for a ReLU)
    block: int
    rows: int
