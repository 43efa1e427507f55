"""Each architecture's encode/decode against a float64 numpy reference, and the registry."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from mistudio_common.errors import AlreadyExists, InvalidArgument
from mistudio_compute.sae import (
    Sae,
    StandardSae,
    architectures,
    build_sae,
    known_architectures,
    register_architecture,
)

from tests.compute.builders import Weights, sae_config, sae_weights

ARCHITECTURES = ["standard", "jumprelu", "topk", "gated"]
D_IN, D_SAE, K = 32, 64, 8


def reference_encode(arch: str, w: Weights, x: np.ndarray, apply_b_dec: bool = True) -> np.ndarray:
    """The SAELens rules (reference §3), in float64."""
    w64 = {n: t.astype(np.float64) for n, t in w.items()}
    x_c = x - w64["b_dec"] * apply_b_dec
    if arch == "gated":
        gate = (x_c @ w64["W_enc"] + w64["b_gate"]) > 0
        magnitude = np.maximum(x_c @ (w64["W_enc"] * np.exp(w64["r_mag"])) + w64["b_mag"], 0)
        return gate * magnitude
    pre = x_c @ w64["W_enc"] + w64["b_enc"]
    if arch == "jumprelu":
        return np.maximum(pre, 0) * (pre > w64["threshold"])
    if arch == "topk":
        out = np.zeros_like(pre)
        top = np.argsort(-pre, axis=-1)[:, :K]
        np.put_along_axis(out, top, np.maximum(np.take_along_axis(pre, top, -1), 0), -1)
        return out
    return np.maximum(pre, 0)


def reference_decode(w: Weights, f: np.ndarray) -> np.ndarray:
    return f @ w["W_dec"].astype(np.float64) + w["b_dec"]


def inputs(n: int = 20, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, D_IN))


@pytest.mark.parametrize("apply_b_dec", [True, False])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_encode_and_decode_match_numpy_reference(arch: str, apply_b_dec: bool) -> None:
    w = sae_weights(arch, D_IN, D_SAE, seed=3)
    sae = build_sae(sae_config(arch, D_IN, D_SAE, apply_b_dec_to_input=apply_b_dec, k=K), w)
    x = inputs()
    expected = reference_encode(arch, w, x, apply_b_dec)
    features = sae.encode(torch.tensor(x, dtype=torch.float32))
    assert features.shape == (20, D_SAE)
    np.testing.assert_allclose(features.numpy(), expected, atol=2e-5)
    assert 0 < (expected > 0).mean() < 1  # the case exercises both firing and silent features
    np.testing.assert_allclose(
        sae.decode(features).numpy(), reference_decode(w, features.double().numpy()), atol=2e-5
    )


def test_encode_accepts_batch_and_position_dimensions() -> None:
    sae = build_sae(sae_config("jumprelu"), sae_weights("jumprelu"))
    x = torch.randn(3, 5, D_IN)  # [batch, pos, d_in]
    torch.testing.assert_close(sae.encode(x), sae.encode(x.reshape(15, D_IN)).reshape(3, 5, D_SAE))


def test_jumprelu_threshold_is_strict_and_unshifted() -> None:
    w = sae_weights("jumprelu", seed=0)
    w["W_enc"][:] = 0
    w["W_enc"][0, :3] = 1.0
    w["b_enc"][:] = 0
    w["threshold"][:3] = [0.5, 0.7, 0.9]
    sae = build_sae(sae_config("jumprelu", apply_b_dec_to_input=False), w)
    x = torch.zeros(1, D_IN)
    x[0, 0] = 0.7  # pre = 0.7 for features 0..2
    assert sae.encode(x)[0, :3].tolist() == pytest.approx([0.7, 0.0, 0.0])


def test_topk_selects_on_raw_preactivation_then_relu() -> None:
    w = sae_weights("topk", seed=0)
    w["W_enc"][:] = 0
    w["b_enc"][:] = -5.0
    w["b_enc"][:2] = [-0.1, 2.0]  # the k largest raw values: 2.0, -0.1 and six at -5
    w["b_enc"][2] = -9.0  # large magnitude but negative: never selected
    sae = build_sae(sae_config("topk", apply_b_dec_to_input=False, k=K), w)
    features = sae.encode(torch.zeros(1, D_IN))
    assert features[0, 1] == pytest.approx(2.0)
    assert int((features != 0).sum()) == 1  # ReLU zeroes the negative selections


def test_topk_with_decoder_norm_rescaling() -> None:
    w = sae_weights("topk", seed=2)
    w["W_dec"] *= np.linspace(0.5, 2.0, D_SAE, dtype=np.float32)[:, None]
    sae = build_sae(sae_config("topk", k=K, rescale_acts_by_decoder_norm=True), w)
    x = inputs(4)
    norms = np.linalg.norm(w["W_dec"].astype(np.float64), axis=1)
    scaled = w | {"b_enc": w["b_enc"] * norms, "W_enc": w["W_enc"] * norms}
    expected = reference_encode("topk", scaled, x)
    features = sae.encode(torch.tensor(x, dtype=torch.float32))
    np.testing.assert_allclose(features.numpy(), expected, atol=3e-5)
    recon = (features.double().numpy() / norms) @ w["W_dec"] + w["b_dec"]
    np.testing.assert_allclose(sae.decode(features).numpy(), recon, atol=3e-5)


def test_expected_average_only_in_scales_the_input() -> None:
    w = sae_weights("standard", seed=4)
    cfg = sae_config("standard", normalize_activations="expected_average_only_in")
    sae = build_sae(cfg | {"norm_scaling_factor": 2.5}, w)
    x = inputs()
    features = sae.encode(torch.tensor(x, dtype=torch.float32))
    np.testing.assert_allclose(
        features.numpy(), reference_encode("standard", w, x * 2.5), atol=3e-5
    )
    recon = reference_decode(w, features.double().numpy()) / 2.5  # back in hook space
    np.testing.assert_allclose(sae.decode(features).numpy(), recon, atol=3e-5)
    assert sae.cfg.normalize_activations == "none"  # folded into the weights


def test_expected_average_only_in_needs_the_factor() -> None:
    cfg = sae_config("standard", normalize_activations="expected_average_only_in")
    with pytest.raises(InvalidArgument) as err:
        build_sae(cfg, sae_weights("standard"))
    assert err.value.field == "norm_scaling_factor"


@pytest.mark.parametrize("mode", ["constant_norm_rescale", "layer_norm"])
def test_run_time_normalisations(mode: str) -> None:
    w = sae_weights("standard", seed=5)
    sae = build_sae(sae_config("standard", normalize_activations=mode), w)
    x = inputs() * 3 + 1
    if mode == "constant_norm_rescale":
        coeff = np.sqrt(D_IN) / np.linalg.norm(x, axis=-1, keepdims=True)
        normed, undo = x * coeff, lambda y: y / coeff
    else:
        mu = x.mean(-1, keepdims=True)
        std = (x - mu).std(-1, ddof=1, keepdims=True)
        normed, undo = (x - mu) / (std + 1e-5), lambda y: y * std + mu
    features = sae.encode(torch.tensor(x, dtype=torch.float32))
    np.testing.assert_allclose(features.numpy(), reference_encode("standard", w, normed), atol=3e-5)
    recon = undo(reference_decode(w, features.double().numpy()))
    xt = torch.tensor(x, dtype=torch.float32)
    np.testing.assert_allclose(sae.decode(features, xt).numpy(), recon, atol=1e-4)
    np.testing.assert_allclose(sae.reconstruct(xt).numpy(), recon, atol=1e-4)


def test_log_threshold_becomes_threshold() -> None:
    w = sae_weights("jumprelu", seed=6)
    stored: dict[str, Any] = dict(w)
    stored["log_threshold"] = np.log(stored.pop("threshold"))
    sae = build_sae(sae_config("jumprelu"), stored)
    np.testing.assert_allclose(sae.weights["threshold"].numpy(), w["threshold"], rtol=1e-6)


def test_legacy_scaling_factor_is_folded_into_w_dec() -> None:
    w = sae_weights("standard", seed=7)
    scale = np.linspace(0.5, 1.5, D_SAE, dtype=np.float32)
    sae = build_sae(sae_config("standard", layout="legacy"), w | {"scaling_factor": scale})
    f = torch.rand(3, D_SAE)
    expected = (f.double().numpy() * scale) @ w["W_dec"] + w["b_dec"]  # 5.x decode
    np.testing.assert_allclose(sae.decode(f).numpy(), expected, atol=2e-5)


def test_unknown_architecture_lists_known_ones() -> None:
    with pytest.raises(InvalidArgument) as err:
        build_sae(sae_config("jump_relu"), sae_weights("jumprelu"))
    assert err.value.field == "architecture"
    assert all(name in err.value.fix for name in ARCHITECTURES)


def test_registering_a_name_twice_is_refused() -> None:
    with pytest.raises(AlreadyExists):
        register_architecture("standard", StandardSae)


def test_new_architecture_plugs_in_through_the_registry() -> None:
    class Relu6Sae(StandardSae):
        architecture = "test_relu6"

        def _activate(
            self, x_c: torch.Tensor, columns: slice, out: torch.Tensor | None = None
        ) -> torch.Tensor:
            return super()._activate(x_c, columns, out).clamp(max=6.0)  # a new tensor

    register_architecture("test_relu6", Relu6Sae)
    assert "test_relu6" in known_architectures()
    sae = build_sae(sae_config("test_relu6"), sae_weights("standard"))
    assert isinstance(sae, Relu6Sae) and float(sae.encode(torch.randn(4, D_IN) * 100).max()) <= 6


def test_sae_exposes_its_interface() -> None:
    sae: Sae = build_sae(sae_config("gated"), sae_weights("gated"))
    assert (sae.d_in, sae.d_sae, sae.cfg.architecture) == (D_IN, D_SAE, "gated")
    assert (sae.hook_name, sae.model_name) == ("blocks.0.hook_resid_post", "tiny-model")
    assert sae.W_dec.shape == (D_SAE, D_IN) and sae.W_enc.shape == (D_IN, D_SAE)
    assert sorted(sae.state_dict()) == sorted(
        ["W_enc", "b_gate", "b_mag", "r_mag", "W_dec", "b_dec"]
    )
    assert sae.config["metadata"]["hook_name"] == "blocks.0.hook_resid_post"
    assert sae.to("cpu", torch.float64).dtype == torch.float64
    assert sae.encode(torch.randn(2, D_IN)).dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")
def test_encode_on_gpu_matches_cpu() -> None:
    sae = build_sae(sae_config("topk"), sae_weights("topk"))
    x = torch.randn(64, D_IN)
    cpu = sae.encode(x)
    torch.testing.assert_close(sae.to("cuda").encode(x.cuda()).cpu(), cpu, atol=1e-5, rtol=1e-5)


SHARDS = [[0], [3, 4, 5], list(range(500, 530)), list(range(1000, 1100)), [2, 700, 1099]]
"""Feature subsets of a 1,100-feature SAE: single features, shards inside one encode block,
across a block boundary, in the partial last block, and scattered."""


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_encoding_a_subset_of_features_gives_the_bits_of_the_full_encode(
    arch: str, threads: int
) -> None:
    d_sae = 1100  # two full encode blocks and a partial one
    w = sae_weights(arch, D_IN, d_sae, seed=5)
    sae = build_sae(sae_config(arch, D_IN, d_sae, k=K), w)
    x = torch.randn(300, D_IN, generator=torch.Generator().manual_seed(2))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        full = sae.encode(x)  # [300, d_sae]
        for shard in SHARDS:
            features = torch.tensor(shard)
            assert torch.equal(sae.encode_features(x, features), full[:, features]), shard
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_encoding_in_row_tiles_gives_the_bits_of_one_matmul_over_every_row(
    arch: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    d_sae, rows = 1100, 2 * architectures.ENCODE_ROWS + 300  # two full tiles and a partial one
    sae = build_sae(sae_config(arch, D_IN, d_sae, k=K), sae_weights(arch, D_IN, d_sae, seed=5))
    x = torch.randn(rows, D_IN, generator=torch.Generator().manual_seed(3))
    tiled = sae.encode(x)
    shard = sae.encode_features(x, torch.arange(100, 1000))
    monkeypatch.setattr(architectures, "ENCODE_ROWS", rows)
    assert torch.equal(tiled, sae.encode(x))
    assert torch.equal(shard, sae.encode_features(x, torch.arange(100, 1000)))
