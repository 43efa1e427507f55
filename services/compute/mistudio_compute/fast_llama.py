"""A lean forward pass over a llama-style HookedTransformer's weights, for capture and sampling.

TransformerLens materialises a [batch, heads, pos, pos] mask and scores per layer (about 80% of
its CPU time on stories260K) and re-copies its KV cache every step. This reads the same weights
into a few fused matrices, attends with ``F.scaled_dot_product_attention`` (causal, grouped-query,
no mask in memory) and keeps a preallocated KV cache. Its activations agree with TransformerLens's
to float32 rounding (``CAPTURE_TOLERANCE``, checked in the tests at every hook kind), not bit for
bit. It covers exactly the llama2.c family (RMSNorm, rotary on adjacent pairs, gated SiLU MLP,
grouped-query attention): ``supports`` says whether a config is one; ``model_access`` uses it
where it can and TransformerLens elsewhere. It is built from a state dict under TransformerLens's
parameter names and a config read by duck typing (a ``HookedTransformerConfig`` or a
``LlamaConfig``), so a llama2.c checkpoint runs without TransformerLens ever being imported.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from mistudio_common.errors import InvalidArgument

from mistudio_compute.hooks import HookKind, HookPoint

CAPTURE_TOLERANCE = 3e-5
"""Largest absolute difference from TransformerLens's activation at any hook, relative to the
activation's largest magnitude. Both sum in different orders: on 32,768 tokens of stories260K the
residual stream differs by at most 1.6e-6 of it (1e-5 absolute at blocks.2.hook_resid_post), the
attention's hook_z by 7.2e-6."""

_LLAMA2C = {
    "normalization_type": "RMS",
    "positional_embedding_type": "rotary",
    "act_fn": "silu",
    "gated_mlp": True,
    "rotary_adjacent_pairs": True,
    "final_rms": True,
    "attn_only": False,
    "parallel_attn_mlp": False,
    "use_qk_norm": False,
    "use_normalization_before_and_after": False,
    "use_attn_scale": True,
    "attention_dir": "causal",
}
_OFF = (
    "use_local_attn", "attn_types", "scale_attn_by_inverse_layer_idx", "use_NTK_by_parts_rope",
    "use_yarn_rope", "use_dynamic_ntk_rope", "use_logn_attn", "use_attention_sinks",
    "post_embedding_ln", "clip_qkv", "num_experts", "load_in_4bit",
)  # fmt: skip
"""Config switches of TransformerLens that change the forward; each must be off (falsy)."""


@dataclass(frozen=True)
class LlamaConfig:
    """What the lean forward and the hook widths read of a llama2.c-style model: the fields of a
    ``HookedTransformerConfig`` with the same names, for a model TransformerLens never builds."""

    model_name: str
    n_layers: int
    d_model: int
    d_head: int
    n_heads: int
    n_key_value_heads: int | None
    """None: as many as ``n_heads`` (TransformerLens's convention)."""
    d_mlp: int
    d_vocab: int
    n_ctx: int
    rotary_dim: int
    eps: float = 1e-5
    rotary_base: int = 10000


@dataclass(frozen=True)
class _Block:
    ln1: torch.Tensor  # [d_model]
    w_qkv: torch.Tensor  # [d_model, (H + 2 KV) d_head]
    b_qkv: torch.Tensor  # [(H + 2 KV) d_head]
    w_o: torch.Tensor  # [H d_head, d_model]
    b_o: torch.Tensor  # [d_model]
    ln2: torch.Tensor  # [d_model]
    w_gate_in: torch.Tensor  # [d_model, 2 d_mlp]
    b_in: torch.Tensor  # [d_mlp], added after the gate product as TransformerLens does
    w_out: torch.Tensor  # [d_mlp, d_model]
    b_out: torch.Tensor  # [d_model]


class KVCache:
    """Preallocated keys and values for every layer: [batch, kv_heads, max_pos, d_head]."""

    def __init__(self, n_layers: int, shape: tuple[int, int, int, int], like: torch.Tensor) -> None:
        self.keys = [like.new_zeros(shape) for _ in range(n_layers)]
        self.values = [like.new_zeros(shape) for _ in range(n_layers)]
        self.pos = 0  # positions filled so far


def supports(cfg: Any) -> bool:
    """Whether ``cfg`` (a HookedTransformerConfig) is a llama2.c-style model this forward runs."""
    return not _differences(cfg)


class FastLlama:
    """Inference-only forward of a llama-style model (module docstring), on its weights'
    device; it holds fused copies of the attention and MLP matrices.

    ``weights`` are under TransformerLens's parameter names (``llama2c.
    transformer_lens_state_dict``, or a HookedTransformer's state dict: ``FastLlama.of``).
    """

    def __init__(self, cfg: Any, weights: Mapping[str, torch.Tensor]) -> None:
        if not isinstance(cfg, LlamaConfig):
            wrong = _differences(cfg)
            if wrong:
                raise InvalidArgument(
                    f"the fast forward covers llama2.c-style models only; this config differs "
                    f"in {wrong}",
                    field="model_id",
                    fix="sample and capture through model_access for other architectures",
                )
        self.n_layers, self.d_vocab, self.n_ctx = cfg.n_layers, cfg.d_vocab, cfg.n_ctx
        self.n_heads, self.d_head, self.eps = cfg.n_heads, cfg.d_head, cfg.eps
        self.kv_heads = cfg.n_key_value_heads or cfg.n_heads
        sd = {k: v.detach() for k, v in weights.items()}
        self.W_E = sd["embed.W_E"]  # [d_vocab, d_model]
        self.W_U, self.b_U = sd["unembed.W_U"], sd["unembed.b_U"]  # [d_model, d_vocab], [d_vocab]
        self.ln_final = sd["ln_final.w"]
        self.blocks = [self._block(sd, f"blocks.{i}.") for i in range(cfg.n_layers)]
        device = self.W_E.device
        half = torch.arange(0, cfg.rotary_dim, 2, dtype=torch.float32) / cfg.rotary_dim
        angles = torch.arange(cfg.n_ctx, dtype=torch.float32)[:, None] / cfg.rotary_base**half
        self.rotation = torch.polar(torch.ones_like(angles), angles).to(device)  # [n_ctx, r/2]
        self.rotary_dim = cfg.rotary_dim

    @classmethod
    def of(cls, model: Any) -> FastLlama:
        """The lean forward over a built HookedTransformer's weights."""
        return cls(model.cfg, model.state_dict())

    @staticmethod
    def _block(sd: dict[str, torch.Tensor], p: str) -> _Block:
        def heads(name: str) -> torch.Tensor:  # W_Q [H, d_model, d_head] -> [d_model, H d_head]
            w = sd.get(p + f"attn.{name}", sd.get(p + f"attn._{name}"))
            assert w is not None, p + name
            return w.permute(1, 0, 2).flatten(1)

        def bias(name: str) -> torch.Tensor:
            b = sd.get(p + f"attn.{name}", sd.get(p + f"attn._{name}"))
            assert b is not None, p + name
            return b.flatten()

        return _Block(
            ln1=sd[p + "ln1.w"],
            w_qkv=torch.cat([heads("W_Q"), heads("W_K"), heads("W_V")], dim=1),
            b_qkv=torch.cat([bias("b_Q"), bias("b_K"), bias("b_V")]),
            w_o=sd[p + "attn.W_O"].flatten(0, 1),
            b_o=sd[p + "attn.b_O"],
            ln2=sd[p + "ln2.w"],
            w_gate_in=torch.cat([sd[p + "mlp.W_gate"], sd[p + "mlp.W_in"]], dim=1),
            b_in=sd[p + "mlp.b_in"],
            w_out=sd[p + "mlp.W_out"],
            b_out=sd[p + "mlp.b_out"],
        )

    def new_cache(self, batch: int, max_pos: int) -> KVCache:
        return KVCache(self.n_layers, (batch, self.kv_heads, max_pos, self.d_head), self.W_E)

    @torch.inference_mode()
    def logits(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits [batch, pos, d_vocab] of ``tokens`` [batch, pos], after ``cache`` if given."""
        pos0 = cache.pos if cache is not None else 0
        x = self.W_E[tokens]  # [batch, pos, d_model]
        for layer, block in enumerate(self.blocks):
            x = self._run_block(block, x, None, cache, layer, pos0)
        if cache is not None:
            cache.pos = pos0 + tokens.shape[1]
        return self._rms(x, self.ln_final) @ self.W_U + self.b_U

    @torch.inference_mode()
    def capture(self, tokens: torch.Tensor, point: HookPoint) -> torch.Tensor:
        """The activation at ``point`` in TransformerLens's shape: [batch, pos, width], or
        [batch, pos, heads, d_head] at attention hooks. Later blocks are not run."""
        x = self.W_E[tokens]  # [batch, pos, d_model]
        for layer, block in enumerate(self.blocks[: point.layer]):
            x = self._run_block(block, x, None, None, layer, 0)
        return self._run_block(self.blocks[point.layer], x, point.kind, None, point.layer, 0)

    def _run_block(
        self,
        block: _Block,
        x: torch.Tensor,
        stop: HookKind | None,
        cache: KVCache | None,
        layer: int,
        pos0: int,
    ) -> torch.Tensor:
        """The block's output [batch, pos, d_model], or its activation at hook ``stop``."""
        if stop is HookKind.RESID_PRE:
            return x
        batch, n_pos, _ = x.shape
        H, KV, dh = self.n_heads, self.kv_heads, self.d_head
        qkv = self._rms(x, block.ln1) @ block.w_qkv  # [b, pos, (H + 2 KV) dh]
        qkv += block.b_qkv
        qk = qkv[..., : (H + KV) * dh].view(batch, n_pos, H + KV, dh)  # before rotary
        v = qkv[..., (H + KV) * dh :].view(batch, n_pos, KV, dh)
        if stop is HookKind.ATTN_Q:
            return qk[:, :, :H]
        if stop is HookKind.ATTN_K:
            return qk[:, :, H:]
        if stop is HookKind.ATTN_V:
            return v
        q, k = self._rotate(qk, pos0).transpose(1, 2).split([H, KV], dim=1)  # [b, heads, pos, dh]
        z = self._attend(q, k, v.transpose(1, 2), cache, layer, pos0).transpose(1, 2)
        if stop is HookKind.ATTN_Z:
            return z  # [b, pos, H, dh]
        attn_out = z.flatten(2) @ block.w_o
        attn_out += block.b_o
        if stop is HookKind.ATTN_OUT:
            return attn_out
        x = attn_out.add_(x)  # x + attn_out, into the buffer it no longer needs
        if stop is HookKind.RESID_MID:
            return x
        gate, up = (self._rms(x, block.ln2) @ block.w_gate_in).chunk(2, dim=-1)  # [b, pos, d_mlp]
        post = F.silu(gate).mul_(up).add_(block.b_in)
        if stop is HookKind.MLP_POST:
            return post
        mlp_out = post @ block.w_out
        mlp_out += block.b_out
        if stop is HookKind.MLP_OUT:
            return mlp_out
        return mlp_out.add_(x)

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cache: KVCache | None,
        layer: int,
        pos0: int,
    ) -> torch.Tensor:
        """Causal grouped-query attention [b, H, pos, dh] of the new positions, which see the
        cached ones before them (a query head h reads KV head h // (H / KV))."""
        n_pos = q.shape[2]
        mask = None
        if cache is not None:
            end = pos0 + n_pos
            cache.keys[layer][:, :, pos0:end] = k
            cache.values[layer][:, :, pos0:end] = v
            k, v = cache.keys[layer][:, :, :end], cache.values[layer][:, :, :end]
            if pos0 and n_pos > 1:  # is_causal aligns to the top left, not after the cache
                mask = torch.ones(n_pos, end, dtype=torch.bool, device=q.device).tril(pos0)
        causal = mask is None and n_pos > 1 and pos0 == 0
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True
        )

    def _rotate(self, x: torch.Tensor, pos0: int) -> torch.Tensor:
        """Rotary embedding of [b, pos, heads, dh] on adjacent pairs (llama2.c's convention) of
        the first rotary_dim, as one complex product per pair."""
        n_pos, r = x.shape[1], self.rotary_dim
        pairs = torch.view_as_complex(x[..., :r].unflatten(-1, (r // 2, 2)))  # [b, pos, h, r/2]
        turn = self.rotation[pos0 : pos0 + n_pos, None]  # [pos, 1, r/2]
        rotated = torch.view_as_real(pairs * turn).flatten(-2)
        return torch.cat([rotated, x[..., r:]], dim=-1) if r < x.shape[-1] else rotated

    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, w.shape, w, self.eps)


def _differences(cfg: Any) -> dict[str, Any]:
    """The config fields in which ``cfg`` is not a llama2.c-style model (empty: it is one)."""
    wrong = {k: getattr(cfg, k, None) for k, v in _LLAMA2C.items() if getattr(cfg, k, None) != v}
    wrong |= {k: getattr(cfg, k) for k in _OFF if getattr(cfg, k, None)}
    scale = getattr(cfg, "attn_scale", cfg.d_head**0.5)
    if abs(scale - cfg.d_head**0.5) > 1e-6:
        wrong["attn_scale"] = scale
    for cap in ("attn_scores_soft_cap", "output_logits_soft_cap"):
        if getattr(cfg, cap, -1) > 0:
            wrong[cap] = getattr(cfg, cap)
    return wrong
