"""A lean forward pass over a llama-style HookedTransformer's weights, for sampling and capture.

TransformerLens materialises a [batch, heads, pos, pos] mask per layer and re-copies its KV
cache every step, which makes sampling a corpus from stories260K several times slower than the
model's size warrants. This reads the same weights into a few fused matrices, uses
grouped-query attention without per-head copies and a preallocated KV cache, and is checked against
TransformerLens in the tests. It covers exactly the llama2.c family (RMSNorm, rotary on adjacent
pairs, gated SiLU MLP, grouped-query attention); anything else should use ``model_access``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from mistudio_common.errors import InvalidArgument

from mistudio_compute.hooks import HookKind, parse_hook_name

SUPPORTED_HOOKS = (HookKind.RESID_PRE, HookKind.RESID_POST)


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

    def __init__(self, n_layers: int, batch: int, kv_heads: int, max_pos: int, d_head: int) -> None:
        shape = (batch, kv_heads, max_pos, d_head)
        self.keys = [torch.zeros(shape) for _ in range(n_layers)]
        self.values = [torch.zeros(shape) for _ in range(n_layers)]
        self.pos = 0  # positions filled so far


class FastLlama:
    """Inference-only forward of a llama-style HookedTransformer (module docstring)."""

    def __init__(self, model: Any) -> None:
        cfg = model.cfg
        _check_supported(cfg)
        self.n_layers, self.d_vocab, self.n_ctx = cfg.n_layers, cfg.d_vocab, cfg.n_ctx
        self.n_heads, self.d_head, self.eps = cfg.n_heads, cfg.d_head, cfg.eps
        self.kv_heads = cfg.n_key_value_heads or cfg.n_heads
        sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
        self.W_E = sd["embed.W_E"]  # [d_vocab, d_model]
        self.W_U, self.b_U = sd["unembed.W_U"], sd["unembed.b_U"]  # [d_model, d_vocab], [d_vocab]
        self.ln_final = sd["ln_final.w"]
        self.blocks = [self._block(sd, f"blocks.{i}.") for i in range(cfg.n_layers)]
        half = torch.arange(0, cfg.rotary_dim, 2, dtype=torch.float32) / cfg.rotary_dim
        angles = torch.arange(cfg.n_ctx, dtype=torch.float32)[:, None] / cfg.rotary_base**half
        self.cos, self.sin = angles.cos(), angles.sin()  # [n_ctx, rotary_dim / 2]
        self.rotary_dim = cfg.rotary_dim

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
        return KVCache(self.n_layers, batch, self.kv_heads, max_pos, self.d_head)

    @torch.inference_mode()
    def logits(self, tokens: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits [batch, pos, d_vocab] of ``tokens`` [batch, pos], after ``cache`` if given."""
        x = self._run(tokens, cache, self.n_layers)
        return self._rms(x, self.ln_final) @ self.W_U + self.b_U

    @torch.inference_mode()
    def capture(self, tokens: torch.Tensor, hook_name: str) -> torch.Tensor:
        """The activation [batch, pos, d_model] at a residual hook; later blocks are not run."""
        point = parse_hook_name(hook_name)
        if point.kind not in SUPPORTED_HOOKS or point.layer >= self.n_layers:
            raise InvalidArgument(
                f"the fast forward reads only residual hooks of layers 0..{self.n_layers - 1}, "
                f"not {hook_name!r}",
                field="hook_point",
                fix="use blocks.L.hook_resid_pre/hook_resid_post, or model_access.capture_hook",
            )
        n_blocks = point.layer + (point.kind is HookKind.RESID_POST)
        return self._run(tokens, None, n_blocks)

    def _run(self, tokens: torch.Tensor, cache: KVCache | None, n_blocks: int) -> torch.Tensor:
        pos0 = cache.pos if cache is not None else 0
        x = self.W_E[tokens]  # [batch, pos, d_model]
        for layer, block in enumerate(self.blocks[:n_blocks]):
            x = x + self._attention(block, self._rms(x, block.ln1), cache, layer, pos0)
            gate, up = (self._rms(x, block.ln2) @ block.w_gate_in).chunk(
                2, dim=-1
            )  # [b, pos, d_mlp]
            x = x + (F.silu(gate) * up + block.b_in) @ block.w_out + block.b_out
        if cache is not None:
            cache.pos = pos0 + tokens.shape[1]
        return x

    def _attention(
        self, block: _Block, h: torch.Tensor, cache: KVCache | None, layer: int, pos0: int
    ) -> torch.Tensor:
        batch, n_pos, _ = h.shape
        H, KV, dh = self.n_heads, self.kv_heads, self.d_head
        q, k, v = (h @ block.w_qkv + block.b_qkv).split([H * dh, KV * dh, KV * dh], dim=-1)
        q = self._rotate(q.view(batch, n_pos, H, dh).transpose(1, 2), pos0)  # [b, H, pos, dh]
        k = self._rotate(k.view(batch, n_pos, KV, dh).transpose(1, 2), pos0)  # [b, KV, pos, dh]
        v = v.view(batch, n_pos, KV, dh).transpose(1, 2)
        if cache is not None:
            end = pos0 + n_pos
            cache.keys[layer][:, :, pos0:end] = k
            cache.values[layer][:, :, pos0:end] = v
            k, v = cache.keys[layer][:, :, :end], cache.values[layer][:, :, :end]
        # Grouped-query attention without copying K/V per head: query head h reads KV head h // G.
        G = H // KV
        scores = (
            q.view(batch, KV, G * n_pos, dh) @ k.transpose(-1, -2) / dh**0.5
        )  # [b, KV, G pos, t]
        scores = scores.view(batch, KV, G, n_pos, -1)
        if n_pos > 1:  # causal within the new block; a single new position sees the whole cache
            t = scores.shape[-1]
            allowed = torch.ones(n_pos, t, dtype=torch.bool).tril(diagonal=t - n_pos)
            scores = scores.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(scores, dim=-1).view(batch, KV, G * n_pos, -1)
        out = (probs @ v).view(batch, H, n_pos, dh)  # [b, H, pos, dh]
        return out.transpose(1, 2).reshape(batch, n_pos, H * dh) @ block.w_o + block.b_o

    def _rotate(self, x: torch.Tensor, pos0: int) -> torch.Tensor:
        """Rotary embedding on adjacent pairs (llama2.c's convention) of the first rotary_dim."""
        n_pos, r = x.shape[-2], self.rotary_dim
        cos, sin = self.cos[pos0 : pos0 + n_pos], self.sin[pos0 : pos0 + n_pos]  # [pos, r/2]
        even, odd = x[..., 0:r:2], x[..., 1:r:2]
        rotated = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)
        return torch.cat([rotated, x[..., r:]], dim=-1) if r < x.shape[-1] else rotated

    def _rms(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w


def _check_supported(cfg: Any) -> None:
    wanted = {
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
    }
    wrong = {k: getattr(cfg, k, None) for k, v in wanted.items() if getattr(cfg, k, None) != v}
    scale = getattr(cfg, "attn_scale", cfg.d_head**0.5)
    capped = bool(getattr(cfg, "attn_scores_soft_cap", -1) > 0)
    capped |= bool(getattr(cfg, "output_logits_soft_cap", -1) > 0)
    if (
        wrong
        or capped
        or abs(scale - cfg.d_head**0.5) > 1e-6
        or getattr(cfg, "use_attn_scale", True) is False
    ):
        raise InvalidArgument(
            f"the fast forward covers llama2.c-style models only; this config differs in {wrong}",
            field="model_id",
            fix="sample and capture through model_access for other architectures",
        )
