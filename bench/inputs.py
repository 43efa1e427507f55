"""The bench's shared inputs: a token file and a random-but-realistic SAELens SAE folder.

Tokens are seeded random ids from stories260K's text pieces (BOS in column 0), so any size is
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
HOOK_LAYER = 2
HOOK = f"blocks.{HOOK_LAYER}.hook_resid_post"
TEXT_PIECES = 259
"""Ids below this are <unk>, <s>, </s> and byte pieces; random text draws from the rest."""
BOS = 1
CALIBRATION_ROWS = 256
CALIBRATION_SEED = 2


@dataclass(frozen=True)
class BenchInputs:
    model_dir: Path
    token_file: Path
    sae_folder: Path
    d_sae: int
    n_rows: int
    context: int

    @property
    def model_ref(self) -> str:
        return f"llama2c:{self.model_dir / 'stories260K.bin'}?tokenizer={self.model_dir / 'tok512.bin'}"  # noqa: E501

    @property
    def n_tokens(self) -> int:
        return self.n_rows * self.context


def model_dir() -> Path:
    env = os.environ.get("MISTUDIO_DEMO_MODEL_DIR")
    folder = Path(env) if env else (REPO / "../shared/data/stories260k").resolve()
    if not (folder / "stories260K.bin").is_file():
        raise SystemExit(f"stories260K.bin not found in {folder}: set MISTUDIO_DEMO_MODEL_DIR")
    return folder


def write_tokens(path: Path, rows: int, context: int, d_vocab: int = 512, seed: int = 1) -> Path:
    if not path.exists():
        rng = np.random.default_rng(seed)
        tokens = rng.integers(TEXT_PIECES, d_vocab, size=(rows, context), dtype=np.int32)
        tokens[:, 0] = BOS
        np.save(path, tokens)
    return path


def _hook_activations(model_ref: str, tokens: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    from mistudio_compute.model_access import load_model
    from mistudio_compute.tokens import TokenDataset
    from mistudio_compute.training.activations import collect_activations

    loaded = load_model(model_ref, device="cpu")
    dataset = TokenDataset.from_array(tokens, "bench-random", prepend_bos=True)
    return collect_activations(loaded, dataset, HOOK).acts.numpy()  # [kept, d_in]


def write_sae(
    folder: Path, model_ref: str, tokens: np.ndarray[Any, Any], d_sae: int, fire_rate: float
) -> Path:
    from safetensors.numpy import save_file

    if (folder / "cfg.json").exists():
        return folder
    acts = _hook_activations(model_ref, tokens[:CALIBRATION_ROWS])
    d_in = acts.shape[1]
    rng = np.random.default_rng(d_sae)
    w_dec = rng.normal(size=(d_sae, d_in)).astype(np.float32)
    w_dec /= np.linalg.norm(w_dec, axis=1, keepdims=True)
    pre = acts @ w_dec.T  # [tokens, d_sae]
    b_enc = -np.quantile(pre, 1.0 - fire_rate, axis=0)
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
            "model_name": "stories260k",
            "hook_name": HOOK,
            "hook_head_index": None,
            "context_size": int(tokens.shape[1]),
            "prepend_bos": True,
            "dataset_path": "local/bench-random",
        },
    }
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=1), encoding="utf-8")
    return folder


def prepare(
    work: Path, rows: int, context: int, d_sae: int, fire_rate: float = 0.01
) -> BenchInputs:
    """Writes (or reuses) the token file and SAE folder for one size under ``work``."""
    work.mkdir(parents=True, exist_ok=True)
    models = model_dir()
    token_file = write_tokens(work / f"tokens-{rows}x{context}.npy", rows, context)
    inputs = BenchInputs(models, token_file, work / f"sae-{d_sae}", d_sae, rows, context)
    calibration = work / f"calibration-{CALIBRATION_ROWS}x{context}.npy"
    tokens = np.load(write_tokens(calibration, CALIBRATION_ROWS, context, seed=CALIBRATION_SEED))
    write_sae(inputs.sae_folder, inputs.model_ref, tokens, d_sae, fire_rate)
    return inputs
