"""SAE training on synthetic sparse data: deterministic, accurate, and folded correctly."""

from __future__ import annotations

import pytest
import torch
from mistudio_common.errors import InvalidArgument
from mistudio_compute.training.sae_trainer import (
    TrainConfig,
    TrainingSae,
    evaluate,
    export_weights,
    input_scale,
    train_sae,
)

D_IN, N_TRUE = 16, 24


def sparse_data(n: int = 4096, seed: int = 0) -> torch.Tensor:
    """Each row mixes 2 of 24 fixed directions with positive weights, plus an offset."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(N_TRUE, D_IN, generator=g)  # [n_true, d_in]
    codes = torch.zeros(n, N_TRUE)
    picks = torch.randint(0, N_TRUE, (n, 2), generator=g)
    codes.scatter_(1, picks, torch.rand(n, 2, generator=g) * 3 + 0.5)
    return codes @ directions + 5.0  # [n, d_in]; the offset tests b_dec and the input scale


def small(**changes: object) -> TrainConfig:
    base: dict[str, object] = {"d_sae": 32, "k": 2, "steps": 300, "batch_size": 256, "lr": 3e-3}
    return TrainConfig(**(base | changes))  # type: ignore[arg-type]


def test_same_seed_gives_the_same_weight_bytes() -> None:
    acts = sparse_data()
    first, second = train_sae(acts, small()), train_sae(acts, small())
    for name, tensor in first.weights.items():
        assert tensor.numpy().tobytes() == second.weights[name].numpy().tobytes(), name


def test_another_seed_gives_other_weights() -> None:
    acts = sparse_data()
    first, other = train_sae(acts, small()), train_sae(acts, small(seed=1))
    assert not torch.equal(first.weights["W_dec"], other.weights["W_dec"])


@pytest.mark.parametrize("architecture", ["topk", "standard"])
def test_sparse_data_is_reconstructed(architecture: str) -> None:
    acts = sparse_data()
    cfg = small(architecture=architecture, l1_coefficient=0.05)
    w = train_sae(acts, cfg).weights

    def encode(x: torch.Tensor) -> torch.Tensor:
        pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
        if architecture == "standard":
            return torch.relu(pre)
        values, indices = pre.topk(cfg.k, dim=-1)
        return torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))

    metrics, frequencies = evaluate(encode, lambda f: f @ w["W_dec"] + w["b_dec"], acts, cfg.d_sae)
    assert metrics.explained_variance > 0.8
    assert metrics.l0 <= cfg.k if architecture == "topk" else metrics.l0 < cfg.d_sae / 2
    assert frequencies.shape == (cfg.d_sae,)


def test_exported_weights_read_raw_activations() -> None:
    """Folding the input scale: encode(x) on disk == encode(s x) / s in training."""
    acts = sparse_data(512)
    scale = input_scale(acts)
    cfg = small()
    sae = TrainingSae(D_IN, cfg, torch.Generator().manual_seed(3))
    with torch.no_grad():
        sae.b_enc.normal_(generator=torch.Generator().manual_seed(4))
        sae.b_dec.normal_(generator=torch.Generator().manual_seed(5))
    w = export_weights(sae, scale)
    pre = (acts - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    values, indices = pre.topk(cfg.k, dim=-1)
    f = torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))
    with torch.no_grad():
        expected = sae.encode(acts * scale) / scale
        assert torch.allclose(f, expected, atol=1e-5)
        assert torch.allclose(
            f @ w["W_dec"] + w["b_dec"], sae.decode(expected * scale) / scale, atol=1e-4
        )
    assert torch.allclose(w["W_dec"].norm(dim=-1), torch.ones(cfg.d_sae), atol=1e-5)


def test_unknown_architecture_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="architecture"):
        TrainConfig(architecture="gated")
