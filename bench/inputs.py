"""The bench's shared inputs: a model, a token file and a random-but-realistic SAELens SAE folder.

Models (``--model``): ``stories260k``, the real llama2.c stories260K from ../shared/data (the only
pretrained model reachable offline), hooked at block 2; ``gpt2-small-random``, a llama2.c
checkpoint of GPT-2-small's size (d_model 768, 12 layers, 12 heads, d_mlp 2048 gated, ~85M
weights) with seeded random weights and stories260K's 512-piece tokenizer, hooked at block 6 — for
the GPU profile, where the model's forward pass is a realistic share of the work. Both sides load
either through their own llama2.c readers.

Tokens are seeded random ids from the tokenizer's text pieces (BOS in column 0), so any size is
instant and reproducible. The SAE is a SAELens ``standard`` SAE with a unit-norm random decoder,
``W_enc = W_dec.T`` and ``b_enc`` set per feature to minus the ``1 - fire_rate`` quantile of its
pre-activation on real hook activations, so each feature fires on about ``fire_rate`` of tokens
(a random SAE with ``b_enc = 0`` fires on half of them, which no trained SAE does). Calibration
rows are drawn apart from the bench tokens: ``b_enc`` is minus a quantile of the calibration
tokens' own projections, so on those tokens a pre-activation can sit within float32 noise of 0,
where each side's summation order decides whether it fires.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
TEXT_PIECES = 259
"""Ids below this are <unk>, <s>, </s> and byte pieces; random text draws from the rest."""
BOS = 1
CALIBRATION_ROWS = 256
CALIBRATION_SEED = 2
CALIBRATION_FEATURES = 4096
"""Features whose encoder bias is calibrated together (256 x 128 tokens x 4096 x 4 B = 0.5 GB)."""
MODELS = ("stories260k", "gpt2-small-random")
GPT2_SMALL_SIZE = {
    "dim": 768, "hidden": 2048, "n_layers": 12, "n_heads": 12, "n_kv": 12, "vocab": 512,
    "seq_len": 1024,
}  # fmt: skip


@dataclass(frozen=True)
class BenchModel:
    """A legacy llama2.c checkpoint, its tokenizer export and the hooked block."""

    name: str
    checkpoint: Path
    tokenizer: Path
    hook_layer: int
    has_reference: bool
    """stories260K's next-piece probabilities are published; random weights have none to check."""

    @property
    def hook(self) -> str:
        return f"blocks.{self.hook_layer}.hook_resid_post"

    @property
    def model_ref(self) -> str:
        return f"llama2c:{self.checkpoint}?tokenizer={self.tokenizer}"

    def dims(self) -> dict[str, int]:
        from mistudio_compute.llama2c import read_llama2c_config

        c = read_llama2c_config(self.checkpoint)
        return {"d_model": c.dim, "d_mlp": c.hidden_dim, "n_layers": c.n_layers,
                "n_heads": c.n_heads, "n_kv": c.n_kv_heads, "d_vocab": c.vocab_size}  # fmt: skip


@dataclass(frozen=True)
class BenchInputs:
    model: BenchModel
    token_file: Path
    sae_folder: Path
    d_sae: int
    n_rows: int
    context: int

    @property
    def n_tokens(self) -> int:
        return self.n_rows * self.context


def stories_dir() -> Path:
    env = os.environ.get("MISTUDIO_DEMO_MODEL_DIR")
    folder = Path(env) if env else (REPO / "../shared/data/stories260k").resolve()
    if not (folder / "stories260K.bin").is_file():
        raise SystemExit(f"stories260K.bin not found in {folder}: set MISTUDIO_DEMO_MODEL_DIR")
    return folder


def bench_model(name: str, work: Path) -> BenchModel:
    """``name`` from MODELS; a random checkpoint is written once under ``work``."""
    shared = stories_dir()
    tokenizer = shared / "tok512.bin"
    if name == "stories260k":
        return BenchModel(name, shared / "stories260K.bin", tokenizer, 2, True)
    if name == "gpt2-small-random":
        checkpoint = write_random_llama2c(work / f"{name}.bin", **GPT2_SMALL_SIZE)
        return BenchModel(name, checkpoint, tokenizer, 6, False)
    raise SystemExit(f"unknown model {name!r}: choose one of {', '.join(MODELS)}")


def write_random_llama2c(
    path: Path, dim: int, hidden: int, n_layers: int, n_heads: int, n_kv: int, vocab: int,
    seq_len: int, seed: int = 0,
) -> Path:  # fmt: skip
    """A legacy llama2.c checkpoint (shared classifier) with N(0, 0.02) matrices, unit norms and
    llama2.c's rotary tables, written once (to a temporary name, then renamed)."""
    from mistudio_compute.llama2c import HEADER

    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    head, n = dim // n_heads, n_layers

    def normal(*shape: int) -> np.ndarray[Any, Any]:
        return rng.normal(0.0, 0.02, size=shape).astype("<f4")

    angles = np.outer(np.arange(seq_len), 1.0 / 10000.0 ** (np.arange(0, head, 2) / head))
    ones = np.ones((n, dim), "<f4")
    parts = [
        normal(vocab, dim), ones, normal(n, dim, dim), normal(n, n_kv * head, dim),
        normal(n, n_kv * head, dim), normal(n, dim, dim), ones, normal(n, hidden, dim),
        normal(n, dim, hidden), normal(n, hidden, dim), np.ones(dim, "<f4"),
        np.cos(angles).astype("<f4"), np.sin(angles).astype("<f4"),
    ]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    with partial.open("wb") as f:
        f.write(HEADER.pack(dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len))
        for part in parts:
            f.write(part.tobytes())
    partial.rename(path)
    return path


def write_tokens(path: Path, rows: int, context: int, d_vocab: int = 512, seed: int = 1) -> Path:
    if not path.exists():
        rng = np.random.default_rng(seed)
        tokens = rng.integers(TEXT_PIECES, d_vocab, size=(rows, context), dtype=np.int32)
        tokens[:, 0] = BOS
        np.save(path, tokens)
    return path


def _hook_activations(model: BenchModel, tokens: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    from mistudio_compute.model_access import load_model
    from mistudio_compute.tokens import TokenDataset
    from mistudio_compute.training.activations import collect_activations

    loaded = load_model(model.model_ref, device="cpu")
    dataset = TokenDataset.from_array(tokens, "bench-random", prepend_bos=True)
    return collect_activations(loaded, dataset, model.hook).acts.numpy()  # [kept, d_in]


def write_sae(
    folder: Path, model: BenchModel, tokens: np.ndarray[Any, Any], d_sae: int, fire_rate: float
) -> Path:
    from safetensors.numpy import save_file

    if (folder / "cfg.json").exists():
        return folder
    acts = _hook_activations(model, tokens[:CALIBRATION_ROWS])
    d_in = acts.shape[1]
    rng = np.random.default_rng(d_sae)
    w_dec = rng.normal(size=(d_sae, d_in)).astype(np.float32)
    w_dec /= np.linalg.norm(w_dec, axis=1, keepdims=True)
    b_enc = np.concatenate(
        [  # in feature chunks: [tokens, d_sae] at once would not fit at 131k
            -np.quantile(acts @ w_dec[lo : lo + CALIBRATION_FEATURES].T, 1.0 - fire_rate, axis=0)
            for lo in range(0, d_sae, CALIBRATION_FEATURES)
        ]
    )
    weights = {"W_enc": w_dec.T, "b_enc": b_enc, "W_dec": w_dec, "b_dec": np.zeros(d_in)}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()},
        str(folder / "sae_weights.safetensors"),
    )
    cfg = {
        "architecture": "standard",
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "model_name": model.name,
            "hook_name": model.hook,
            "hook_head_index": None,
            "context_size": int(tokens.shape[1]),
            "prepend_bos": True,
            "dataset_path": "local/bench-random",
        },
    }
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    return folder


def prepare(
    work: Path, model: BenchModel, rows: int, context: int, d_sae: int, fire_rate: float = 0.01
) -> BenchInputs:
    """Writes (or reuses) the token file and SAE folder for one size under ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    vocab = model.dims()["d_vocab"]
    token_file = write_tokens(work / f"tokens-{rows}x{context}-v{vocab}.npy", rows, context, vocab)
    sae_folder = work / f"sae-{model.name}-{d_sae}"
    inputs = BenchInputs(model, token_file, sae_folder, d_sae, rows, context)
    calibration = work / f"calibration-{CALIBRATION_ROWS}x{context}-v{vocab}.npy"
    tokens = np.load(write_tokens(calibration, CALIBRATION_ROWS, context, vocab, CALIBRATION_SEED))
    write_sae(inputs.sae_folder, model, tokens, d_sae, fire_rate)
    return inputs
