"""Tiny real objects for compute tests: a 2-layer model, a 64-piece tokenizer, small SAEs.

Everything is seeded and small enough to build in milliseconds. The model builders import
TransformerLens lazily (through ``model_access``), so SAE-only tests do not pay for it.

* ``tiny_tokenizer()``: a SentencePiece BPE (letters, a few merges, no byte fallback).
* ``tiny_model(...)``: ``LoadedModel`` of a seeded 2-layer HookedTransformer (d_model 32,
  4 heads of 8, d_vocab 64, n_ctx 32), optionally with grouped-query attention.
* ``sae_weights(...)`` / ``sae_config(...)`` / ``write_sae_folder(...)``: SAELens tensors and
  cfg.json for each architecture, written by hand (json + safetensors.numpy) in the v6 or the
  legacy 5.x layout, independently of our writer.
* ``tiny_sae(...)``: the same weights built into our ``Sae``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from mistudio_compute.llama2c import SentencePieceTokenizer, sentencepiece_bpe_model
from mistudio_compute.sae import Sae, build_sae
from safetensors.numpy import save_file

if TYPE_CHECKING:
    from mistudio_compute.model_access import LoadedModel

STORIES_DIR = Path(
    os.environ.get(
        "MISTUDIO_DEMO_MODEL_DIR",
        Path(__file__).resolve().parents[3] / "shared" / "data" / "stories260k",
    )
)
STORIES_MODEL = STORIES_DIR / "stories260K.bin"
STORIES_TOKENIZER = STORIES_DIR / "tok512.bin"
STORIES_REF = f"llama2c:{STORIES_MODEL}?tokenizer={STORIES_TOKENIZER}"

TINY_VOCAB = 64
TINY_D_MODEL = 32
Layout = Literal["v6", "legacy"]
Weights = dict[str, np.ndarray[Any, Any]]

_MERGES = [
    "▁t", "he", "▁the", "▁a", "in", "an", "er", "on", "▁s", "re", "at", "en", "ed", "nd",
    "▁w", "▁b", "▁c", "ou", "▁o", "▁f", "is", "it", "ar", "▁h", "▁l", "▁m", "▁d", "or",
    "es", "ing", "▁p", "▁g", "ll", "▁and",
]  # fmt: skip


def tiny_tokenizer() -> SentencePieceTokenizer:
    """64 pieces: <unk> <s> </s>, "▁", a-z, then 34 merges (earlier merges bind first)."""
    normal = ["▁", *"abcdefghijklmnopqrstuvwxyz", *_MERGES]
    pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]
    pieces += [(p, -float(i), 1) for i, p in enumerate(normal)]
    assert len(pieces) == TINY_VOCAB
    return SentencePieceTokenizer.from_model_proto(
        sentencepiece_bpe_model(pieces, byte_fallback=False)
    )


def tiny_model(seed: int = 0, n_key_value_heads: int | None = None) -> LoadedModel:
    """A seeded 2-layer model with ``tiny_tokenizer()``; ``n_key_value_heads=2`` gives GQA."""
    from mistudio_compute.model_access import build_model, wrap_model
    from transformer_lens import HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=TINY_D_MODEL,
        d_head=8,
        n_heads=4,
        n_key_value_heads=n_key_value_heads,
        d_mlp=64,
        d_vocab=TINY_VOCAB,
        n_ctx=32,
        act_fn="gelu",
        normalization_type="LN",
        seed=seed,
    )
    return wrap_model(build_model(cfg), tiny_tokenizer(), name="tiny-model")


def sae_weights(architecture: str, d_in: int = 32, d_sae: int = 64, seed: int = 0) -> Weights:
    """SAELens tensors for ``architecture``, scaled so that some features fire and some do not."""
    rng = np.random.default_rng(seed)
    w_dec = rng.normal(size=(d_sae, d_in))
    w_dec /= np.linalg.norm(w_dec, axis=1, keepdims=True)
    weights: Weights = {
        "W_enc": rng.normal(size=(d_in, d_sae)) / np.sqrt(d_in),
        "W_dec": w_dec,
        "b_dec": rng.normal(scale=0.1, size=d_in),
    }
    if architecture == "gated":
        weights |= {
            "b_gate": rng.normal(scale=0.2, size=d_sae),
            "b_mag": rng.normal(scale=0.2, size=d_sae),
            "r_mag": rng.normal(scale=0.3, size=d_sae),
        }
    else:
        weights["b_enc"] = rng.normal(scale=0.2, size=d_sae)
    if architecture == "jumprelu":
        weights["threshold"] = rng.uniform(0.0, 0.5, size=d_sae)
    return {name: np.ascontiguousarray(w, dtype=np.float32) for name, w in weights.items()}


def sae_config(
    architecture: str,
    d_in: int = 32,
    d_sae: int = 64,
    *,
    layout: Layout = "v6",
    apply_b_dec_to_input: bool = True,
    hook_name: str = "blocks.0.hook_resid_post",
    k: int = 8,
    **extra: Any,
) -> dict[str, Any]:
    """cfg.json in the SAELens 6.54 layout, or the flat layout both 5.x and 6.x load."""
    base: dict[str, Any] = {
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": apply_b_dec_to_input,
    }
    llm = {
        "model_name": "tiny-model",
        "hook_name": hook_name,
        "hook_head_index": None,
        "context_size": 16,
        "prepend_bos": True,
        "dataset_path": "local/handmade",
    }
    if layout == "v6":
        cfg = base | {"normalize_activations": "none", "reshape_activations": "none"}
        cfg["metadata"] = {"sae_lens_version": "6.54.12", **llm}
        cfg["architecture"] = architecture
        if architecture == "topk":
            cfg |= {"k": k, "rescale_acts_by_decoder_norm": False}
    else:
        cfg = base | llm | {"architecture": architecture, "hook_layer": 0}
        if architecture == "topk":
            cfg |= {"k": k, "activation_fn_str": "topk", "activation_fn_kwargs": {"k": k}}
    return cfg | extra


def write_sae_folder(
    folder: Path,
    architecture: str,
    d_in: int = 32,
    d_sae: int = 64,
    *,
    layout: Layout = "v6",
    seed: int = 0,
    weights: Weights | None = None,
    **config: Any,
) -> Path:
    """Writes cfg.json + sae_weights.safetensors by hand and returns ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = weights if weights is not None else sae_weights(architecture, d_in, d_sae, seed)
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    cfg = sae_config(architecture, d_in, d_sae, layout=layout, **config)
    (folder / "cfg.json").write_text(json.dumps(cfg), encoding="utf-8")
    return folder


def tiny_sae(
    architecture: str = "standard", d_in: int = 32, d_sae: int = 64, seed: int = 0, **config: Any
) -> Sae:
    """Our ``Sae`` built from ``sae_weights``/``sae_config`` (v6 layout)."""
    return build_sae(
        sae_config(architecture, d_in, d_sae, **config),
        sae_weights(architecture, d_in, d_sae, seed),
    )
