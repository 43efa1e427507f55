"""The real model, SAE and tokenizer seen through the dashboard computation's Protocols.

``mistudio_compute.dashboards.inputs`` defines what the computation reads; these classes satisfy
it with a loaded ``HookedTransformer`` (``model_access``), an SAE (``sae``) and a tokenizer
(``token_text``), so the computation itself never imports TransformerLens.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch

from mistudio_compute.dashboards.inputs import DashboardInputs, TokenSource
from mistudio_compute.dashboards.wire import Bytes, Ints
from mistudio_compute.encode_tile import AffineEncode, EncodeTile
from mistudio_compute.hooks import HookPoint, validate_hook
from mistudio_compute.model_access import (
    LoadedModel,
    capture_hook,
    unembed_directions,
    unembedding_matrix,
)
from mistudio_compute.sae import Sae
from mistudio_compute.token_text import TokenDisplay, TokenizerAdapter
from mistudio_compute.tokens import TokenDataset


class HookActivations:
    """ActivationReader: the model's forward pass, stopped at the SAE's hook.

    Where ``capture_hook`` attaches hooks to the shared model for one call (TransformerLens),
    two calls on one cached model, of one job or two, take turns through ``lock``; the lean
    forward's run at once.
    """

    def __init__(
        self,
        model: LoadedModel,
        hook: HookPoint,
        head_index: int | None,
        lock: AbstractContextManager[object] | None = None,
    ) -> None:
        self._model, self._hook, self._head = model, hook, head_index
        shared = lock if lock is not None else threading.Lock()
        self._lock = nullcontext() if model.concurrent_captures else shared

    def activations(self, tokens: torch.Tensor) -> torch.Tensor:
        with self._lock:
            return capture_hook(self._model, tokens, self._hook, self._head)  # [B, T, d_in]


class SaeFeatures:
    """AffineEncoder: any SAE architecture, on the model's device."""

    def __init__(self, sae: Sae) -> None:
        self._sae = sae

    @property
    def d_sae(self) -> int:
        return self._sae.d_sae

    @property
    def d_in(self) -> int:
        return self._sae.d_in

    @property
    def device(self) -> torch.device:
        return self._sae.device

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._sae.encode(x)  # [N, d_sae]

    def encode_features(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self._sae.encode_features(x, features)  # [N, F]

    def encode_tiles(self, x: torch.Tensor, features: torch.Tensor) -> Iterator[EncodeTile]:
        return self._sae.encode_tiles(x, features)

    def affine_encode(self, x: torch.Tensor) -> AffineEncode | None:
        return self._sae.affine_encode(x)


class DecoderLogitLens:
    """LogitLensSource: SAE decoder rows mapped into the residual stream the unembedding reads."""

    def __init__(
        self, model: LoadedModel, sae: Sae, hook: HookPoint, head_index: int | None
    ) -> None:
        self._model, self._sae, self._hook, self._head = model, sae, hook, head_index

    def directions(self, features: torch.Tensor) -> torch.Tensor:
        rows = self._sae.W_dec[features.to(self._sae.device)]  # [C, d_in]
        return unembed_directions(self._model, self._hook, rows, self._head)  # [C, d_model]

    @property
    def unembedding(self) -> torch.Tensor:
        return unembedding_matrix(self._model)  # [d_model, d_vocab]


class TokenizerText:
    """TokenText: readable strings that never drop a byte (``token_text`` module)."""

    def __init__(self, tokenizer: TokenizerAdapter, model: LoadedModel) -> None:
        self._display = TokenDisplay(tokenizer)
        ids = (model.bos_token_id, model.eos_token_id, model.pad_token_id)
        self._special = frozenset(i for i in ids if i is not None)
        self._vocab: dict[int, str] = {}

    @property
    def special_ids(self) -> frozenset[int]:
        return self._special

    def windows_utf8(self, ids: Ints, lengths: Ints) -> tuple[Bytes, Ints]:
        return self._display.windows_utf8(ids, lengths)

    def token(self, token_id: int) -> str:
        cached = self._vocab.get(token_id)
        if cached is None:
            cached = self._vocab[token_id] = self._display.window([token_id])[0]
        return cached


def dashboard_inputs(
    model: LoadedModel,
    sae: Sae,
    hook_point: str,
    source: TokenSource,
    model_lock: AbstractContextManager[object] | None = None,
) -> DashboardInputs:
    """Everything the computation reads, with the SAE moved to the model's device."""
    if model.tokenizer is None:
        raise ValueError(f"model {model.name} has no tokenizer")  # checked while preparing
    hook = validate_hook(hook_point, model.n_layers)
    head = sae.cfg.hook_head_index
    sae.to(model.device)
    return DashboardInputs(
        reader=HookActivations(model, hook, head, model_lock),
        encoder=SaeFeatures(sae),
        logit_lens=DecoderLogitLens(model, sae, hook, head),
        token_text=TokenizerText(model.tokenizer, model),
        source=source,
    )


class DatasetTokens:
    """TokenSource: a TokenDataset's rows, each traced to its dataset row and offset."""

    def __init__(self, dataset: TokenDataset) -> None:
        self._dataset = dataset

    @property
    def tokens(self) -> np.ndarray[Any, Any]:
        return self._dataset.tokens  # [rows, T]

    @property
    def dataset(self) -> str:
        return self._dataset.dataset_name

    def locate(self, rows: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        _, origin, offset = self._dataset.locate_many(rows, positions)
        return origin, offset
