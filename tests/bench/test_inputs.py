"""The bench's models: the GPU profile's random GPT-2-small-sized checkpoint is a llama2.c file
that our real loader reads, and the FLOP count follows each model's own header."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from mistudio_compute.llama2c import read_llama2c_checkpoint
from mistudio_compute.model_access import load_model

from bench.inputs import BenchModel, bench_model, write_random_llama2c
from bench.measure import flops_per_token

TINY = {
    "dim": 32, "hidden": 48, "n_layers": 2, "n_heads": 4, "n_kv": 2, "vocab": 512, "seq_len": 64,
}  # fmt: skip


def test_random_checkpoint_is_a_legacy_llama2c_file_our_loader_runs(tmp_path: Path) -> None:
    path = write_random_llama2c(tmp_path / "tiny.bin", **TINY)
    cfg = read_llama2c_checkpoint(path).config
    assert (cfg.dim, cfg.hidden_dim, cfg.n_layers, cfg.n_heads, cfg.n_kv_heads) == (32, 48, 2, 4, 2)
    assert cfg.vocab_size == 512 and cfg.seq_len == 64 and cfg.shared_classifier
    stories = bench_model("stories260k", tmp_path)
    model = BenchModel("tiny", path, stories.tokenizer, 1, has_reference=False)
    assert model.dims() == {
        "d_model": 32, "d_mlp": 48, "n_layers": 2, "n_heads": 4, "n_kv": 2, "d_vocab": 512
    }  # fmt: skip
    loaded = load_model(model.model_ref, device="cpu")
    assert loaded.fast is not None
    logits = loaded.fast.logits(torch.tensor([[1, 300, 301, 302]]))
    assert logits.shape == (1, 4, 512) and bool(torch.isfinite(logits).all())
    assert float(logits.std()) > 0  # random weights, not zeros


def test_random_checkpoint_is_written_once_and_seeded(tmp_path: Path) -> None:
    first = write_random_llama2c(tmp_path / "a.bin", **TINY).read_bytes()
    again = write_random_llama2c(tmp_path / "b.bin", **TINY).read_bytes()
    assert first == again
    reseeded = write_random_llama2c(tmp_path / "c.bin", **TINY, seed=1).read_bytes()
    assert reseeded != first and len(reseeded) == len(first)
    assert not list(tmp_path.glob("*.partial"))


def test_flops_follow_the_header_of_stories260k(tmp_path: Path) -> None:
    stories = bench_model("stories260k", tmp_path)
    dims = stories.dims()
    assert (dims["d_model"], dims["d_mlp"], dims["n_heads"], dims["n_kv"]) == (64, 172, 8, 4)
    d, f, kv, context = 64, 172, 4 * 8, 128
    block = 2 * (2 * d * d + 2 * d * kv) + 2 * 3 * d * f + 4 * context * d
    assert flops_per_token(dims, 2, 4096, context) == 3 * block + 2 * d * 4096
    assert np.isclose(flops_per_token(dims, 2, 8192, context) - 3 * block, 2 * d * 8192)
