"""What the dashboard computation needs from the outside world, as small Protocols.

The service glue satisfies these with the real model, SAE and tokenizer; tests satisfy them with
a tiny HookedTransformer and hand-written encoders. Nothing here knows about gRPC or databases.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from mistudio_compute.dashboards.wire import Bytes, Ints
from mistudio_compute.encode_tile import AffineEncode, EncodeTile


class ActivationReader(Protocol):
    """The model forward, stopped at the hook the SAE reads; called from several threads at once
    (a reader whose forwards cannot overlap takes turns itself)."""

    def activations(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B, T] int64 -> hook activations [B, T, d_in]."""
        ...


class FeatureEncoder(Protocol):
    """Any SAE architecture: hook activations in, feature activations out."""

    @property
    def d_sae(self) -> int: ...

    @property
    def d_in(self) -> int:
        """Width of the hook activations it encodes."""
        ...

    @property
    def device(self) -> torch.device:
        """Where the pass runs; the per-feature state lives here too."""
        ...

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, d_in] -> feature activations [N, d_sae]."""
        ...

    def encode_features(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        """x [N, d_in], features [F] int64 -> their activations [N, F], bit for bit the columns
        of ``encode`` (a feature shard's pass calls this, so its cost follows the shard)."""
        ...


@runtime_checkable
class TileEncoder(FeatureEncoder, Protocol):
    """An encoder that also hands its encode over tile by tile: a pass on the CPU takes each
    tile's active entries while it is in cache, never writing the dense activations out."""

    def encode_tiles(self, x: torch.Tensor, features: torch.Tensor) -> Iterator[EncodeTile]:
        """x [N, d_in], features [F] int64 -> ``encode_features(x, features)`` as tiles, bit
        for bit where positive (entries <= 0 do not fire); a tile is valid until the next is
        asked for. A feature's tiles come in row order."""
        ...


@runtime_checkable
class AffineEncoder(TileEncoder, Protocol):
    """A tile encoder that can also describe its encode as an ``AffineEncode``, which a pass on
    the CPU computes and scans tile by tile in compiled code without the GIL."""

    def affine_encode(self, x: torch.Tensor) -> AffineEncode | None:
        """x [N, d_in] -> its encode as an affine map and a floor, bit for bit
        ``encode_features``'s where positive; None when the architecture's is not one."""
        ...


class LogitLensSource(Protocol):
    """Decoder directions in the residual space the unembedding reads."""

    def directions(self, features: torch.Tensor) -> torch.Tensor:
        """features [C] int64 -> decoder directions in model space [C, d_model]."""
        ...

    @property
    def unembedding(self) -> torch.Tensor:
        """W_U [d_model, d_vocab]."""
        ...


class TokenText(Protocol):
    """Display strings for token ids, and which ids are special."""

    @property
    def special_ids(self) -> frozenset[int]:
        """BOS/EOS/PAD ids: never an example's max token, excluded from statistics."""
        ...

    def windows_utf8(self, ids: Ints, lengths: Ints) -> tuple[Bytes, Ints]:
        """The display strings of context windows laid one after another in ``ids``,
        ``lengths`` tokens each (decoding may depend on neighbours inside a window, never
        across), as UTF-8: their bytes one after another, and each string's length."""
        ...

    def token(self, token_id: int) -> str:
        """Display string for one token on its own (logit lens, token tables)."""
        ...


class TokenSource(Protocol):
    """The token rows to stream over, and where each row came from."""

    @property
    def tokens(self) -> np.ndarray:
        """Integer array [rows, T]; may be a memmap."""
        ...

    @property
    def dataset(self) -> str: ...

    def locate(self, rows: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(documents, offsets in them) [N] of tokens ``positions`` [N] of ``rows`` [N]: rows may
        pack several documents, and a prepended BOS is not a document token."""
        ...


@dataclass(frozen=True, slots=True)
class ArrayTokenSource:
    """A TokenSource over an in-memory array whose rows are dataset rows starting at offset 0."""

    tokens: np.ndarray
    dataset: str = ""

    def locate(self, rows: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return rows, positions


@dataclass(frozen=True, slots=True)
class DashboardInputs:
    """Everything the computation reads, bundled so entry points take one argument."""

    reader: ActivationReader
    encoder: FeatureEncoder
    logit_lens: LogitLensSource
    token_text: TokenText
    source: TokenSource


class Stage(enum.Enum):
    """Progress stages; names match ``mistudio.common.v1.Stage`` (``STAGE_`` + name)."""

    ACTIVATION_PASS = "activation_pass"
    LOADING_EXAMPLES = "loading_examples"
    LOGIT_LENS = "logit_lens"
    HISTOGRAMS = "histograms"
    TOKEN_AGGREGATION = "token_aggregation"


ProgressCallback = Callable[[Stage, int, int, str], None]
"""(stage, items done, items total, message); messages report e.g. a halved batch size."""


class CancelCheck(Protocol):
    """Anything with ``is_set()``, e.g. ``threading.Event``."""

    def is_set(self) -> bool: ...
