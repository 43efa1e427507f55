"""A tiny real setup: a seeded 2-layer HookedTransformer, hand-written SAEs, random token rows.

The SAEs' encoder biases are calibrated on the data so features fire sparsely (2-8 % of
tokens); feature 0 never fires and feature 1 fires on exactly one non-special token.
"""

from __future__ import annotations

import threading
import warnings

import numpy as np
import torch
from mistudio_compute.dashboards import ArrayTokenSource, DashboardInputs

HOOK = "blocks.1.hook_resid_pre"
BOS, PAD = 0, 1
SPECIAL = frozenset({BOS, PAD})
D_MODEL, D_VOCAB, N_CTX = 32, 64, 32
ROWS = 64


def tiny_model():  # -> HookedTransformer (imported lazily: the import is slow)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        cfg = HookedTransformerConfig(
            n_layers=2, d_model=D_MODEL, d_head=8, n_heads=4, d_mlp=64, d_vocab=D_VOCAB,
            n_ctx=N_CTX, act_fn="gelu", seed=0, device="cpu",
        )  # fmt: skip
        model = HookedTransformer(cfg)
    model.eval()
    return model


def tiny_tokens(rows: int = ROWS, seed: int = 0) -> np.ndarray:
    """Random ids with BOS in column 0, PAD tails on some rows and two duplicated rows."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, D_VOCAB, size=(rows, N_CTX))
    tokens[:, 0] = BOS
    tokens[3, -5:] = PAD
    tokens[10, -12:] = PAD
    tokens[7] = tokens[2]  # identical windows in another row (same batch)
    tokens[40] = tokens[5]  # and in another batch
    return tokens


class HookReader:
    """Model forward stopped after the hook's block; returns the hook's activations. Its calls
    take turns, as the service's do on TransformerLens: the hooks are attached to the model."""

    def __init__(self, model, hook: str = HOOK) -> None:
        self.model, self.hook = model, hook
        self.layer = int(hook.split(".")[1])
        self._turns = threading.Lock()

    def activations(self, tokens: torch.Tensor) -> torch.Tensor:
        out: dict[str, torch.Tensor] = {}

        def save(x: torch.Tensor, hook: object) -> None:
            out["x"] = x

        with self._turns:
            self.model.run_with_hooks(
                tokens, fwd_hooks=[(self.hook, save)], stop_at_layer=self.layer + 1
            )
        return out["x"]


class ReluSAE:
    def __init__(self, w_enc: torch.Tensor, b_enc: torch.Tensor, w_dec: torch.Tensor) -> None:
        self.w_enc, self.b_enc, self.w_dec = w_enc, b_enc, w_dec

    @property
    def d_sae(self) -> int:
        return self.w_enc.shape[1]

    @property
    def d_in(self) -> int:
        return self.w_enc.shape[0]

    @property
    def device(self) -> torch.device:
        return self.w_enc.device

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.pre(x) + self.b_enc)

    def encode_features(self, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
        return self.encode(x).index_select(1, features)


class TopKSAE(ReluSAE):
    k = 4

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = self.pre(x) + self.b_enc
        top = z.topk(self.k, dim=1)
        return torch.zeros_like(z).scatter_(1, top.indices, torch.relu(top.values))


class DecoderLens:
    def __init__(self, sae: ReluSAE, model) -> None:
        self.sae, self.model = sae, model

    def directions(self, features: torch.Tensor) -> torch.Tensor:
        return self.sae.w_dec[features]

    @property
    def unembedding(self) -> torch.Tensor:
        return self.model.W_U.detach()


class TinyText:
    """``t<id>``, except ids 60-63, which all display as ``tz`` (so strings group ids)."""

    special_ids = SPECIAL

    def token(self, token_id: int) -> str:
        return "tz" if token_id >= 60 else f"t{token_id}"

    def windows_utf8(self, ids: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        texts = [self.token(i).encode() for i in ids.tolist()]
        return np.frombuffer(b"".join(texts), np.uint8), np.array([len(t) for t in texts], np.int64)


def make_sae(model, tokens: np.ndarray, kind: str, d_sae: int = 96, seed: int = 1) -> ReluSAE:
    g = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(d_sae, D_MODEL, generator=g)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    cls = TopKSAE if kind == "topk" else ReluSAE
    sae = cls(w_dec.T.clone(), torch.zeros(d_sae), w_dec)
    with torch.no_grad():
        x = HookReader(model).activations(torch.from_numpy(tokens))  # [rows, T, d_model]
    target = x[20, 10]  # feature 1 peaks at a single token of an unduplicated row
    sae.w_enc[:, 1] = target / target.norm()
    pre = sae.pre(x.reshape(-1, D_MODEL))[~np.isin(tokens, list(SPECIAL)).reshape(-1)]
    density = torch.linspace(0.02, 0.08, d_sae)
    rank = ((1 - density) * (len(pre) - 1)).long()  # per-feature threshold order statistic
    b_enc = -pre.sort(dim=0).values[rank, torch.arange(d_sae)]
    top2 = pre[:, 1].topk(2).values
    b_enc[0] = -(pre[:, 0].max() + 1.0)  # dead
    b_enc[1] = -(top2[0] + top2[1]) / 2  # fires once (outside special tokens)
    sae.b_enc = b_enc
    return sae


def make_inputs(model, sae: ReluSAE, tokens: np.ndarray, reader=None) -> DashboardInputs:
    return DashboardInputs(
        reader=reader or HookReader(model),
        encoder=sae,
        logit_lens=DecoderLens(sae, model),
        token_text=TinyText(),
        source=ArrayTokenSource(tokens, dataset="tiny"),
    )


def dense_activations(inputs: DashboardInputs, batch_size: int) -> np.ndarray:
    """[rows, T, d_sae] from the same reader and encoder on the same batches as the pass."""
    tokens = inputs.source.tokens
    parts = []
    with torch.no_grad():
        for i in range(0, len(tokens), batch_size):
            batch = torch.from_numpy(tokens[i : i + batch_size])
            x = inputs.reader.activations(batch)
            parts.append(inputs.encoder.encode(x.reshape(-1, x.shape[-1])).view(*batch.shape, -1))
    return torch.cat(parts).numpy()
