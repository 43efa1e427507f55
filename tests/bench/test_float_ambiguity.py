"""The frequency check's allowance is measured: a token counts when exactly one side makes a
feature fire, each side with its own hook activations and encoder weights, and only then (special
tokens never count)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from mistudio_compute.model_access import capture_hook, load_model
from mistudio_compute.sae.loading import load_sae
from safetensors.numpy import load_file, save_file

from bench.float_ambiguity import TheirEncode, float_ambiguous_tokens
from bench.inputs import (
    BenchInputs,
    BenchModel,
    bench_model,
    write_random_llama2c,
    write_sae,
    write_tokens,
)

TINY = {
    "dim": 32, "hidden": 48, "n_layers": 2, "n_heads": 4, "n_kv": 2, "vocab": 512, "seq_len": 64,
}  # fmt: skip
ROWS, CONTEXT, D_SAE = 40, 16, 200  # 40 rows: two of SAEDashboard's 32-row batches


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> BenchInputs:
    """A tiny model and SAE; the encoder bias is moved off its calibration quantiles, so no
    pre-activation sits within float noise of 0 and the two encodes agree on equal inputs."""
    tmp = tmp_path_factory.mktemp("ambiguity")
    stories = bench_model("stories260k", tmp)
    model = BenchModel("tiny", write_random_llama2c(tmp / "tiny.bin", **TINY), stories.tokenizer,
                       1, has_reference=False)  # fmt: skip
    calibration = np.load(write_tokens(tmp / "calibration.npy", 64, CONTEXT, seed=2))
    folder = write_sae(tmp / "sae", model, calibration, D_SAE, fire_rate=0.2)
    weights = load_file(str(folder / "sae_weights.safetensors"))
    weights["b_enc"] += np.float32(1e-3)
    save_file(weights, str(folder / "sae_weights.safetensors"))
    tokens = write_tokens(tmp / "tokens.npy", ROWS, CONTEXT)
    return BenchInputs(model, tokens, folder, D_SAE, ROWS, CONTEXT)


def our_activations(inputs: BenchInputs) -> np.ndarray[Any, Any]:
    loaded = load_model(inputs.model.model_ref, device="cpu")
    tokens = torch.from_numpy(np.load(inputs.token_file).astype(np.int64))
    return capture_hook(loaded, tokens, inputs.model.hook).numpy().copy()  # [rows, context, d]


def encoded(inputs: BenchInputs, acts: np.ndarray[Any, Any]) -> TheirEncode:
    """Their side: ``acts`` encoded with the SAE folder's own weights."""
    weights = load_file(str(inputs.sae_folder / "sae_weights.safetensors"))
    return TheirEncode(acts, weights["W_enc"], weights["b_enc"])


def test_the_same_activations_leave_no_token_ambiguous(inputs: BenchInputs) -> None:
    found = float_ambiguous_tokens(inputs, encoded(inputs, our_activations(inputs)))
    assert found.tokens.shape == (D_SAE,)
    assert found.tokens.sum() == 0
    assert found.max_abs_resid_diff == 0.0 and found.max_flipped_activation == 0.0


def test_a_token_pushed_across_zero_on_their_side_counts_once_for_its_feature(
    inputs: BenchInputs,
) -> None:
    ours = our_activations(inputs)
    sae = load_sae(inputs.sae_folder)
    row, pos = 35, 7  # in the second batch
    z = sae.encode(torch.from_numpy(ours[row, pos]))  # [d_sae]
    feature = int(z.argmax())
    w = sae.W_enc[:, feature].numpy()
    theirs = ours.copy()
    theirs[row, pos] -= (float(z[feature]) + 1e-3) * w / (w @ w)  # its pre-activation: -1e-3
    theirs[:, 0] += 100.0  # BOS: special, never counted
    found = float_ambiguous_tokens(inputs, encoded(inputs, theirs))
    assert found.tokens[feature] == 1
    assert found.tokens.max() == 1  # every flip is at that one token
    assert found.max_flipped_activation >= float(z[feature])
    assert found.max_abs_resid_diff == pytest.approx(np.abs(theirs - ours)[row, pos].max())


def test_their_side_is_encoded_with_the_weights_their_run_held(inputs: BenchInputs) -> None:
    """SAEDashboard folds W_dec's row norms into W_enc and b_enc; a rescaled row moves a
    pre-activation near 0 across it on their side alone."""
    ours = our_activations(inputs)
    sae = load_sae(inputs.sae_folder)
    row, pos = 3, 5
    z = sae.encode(torch.from_numpy(ours[row, pos]))  # [d_sae]
    feature = int(z.argmax())
    theirs = encoded(inputs, ours)
    b_enc = theirs.b_enc.copy()
    b_enc[feature] -= float(z[feature]) + 1e-3  # its pre-activation there: -1e-3
    found = float_ambiguous_tokens(inputs, theirs._replace(b_enc=b_enc))
    assert found.tokens[feature] >= 1
    assert found.tokens.sum() == found.tokens[feature]  # no other feature's weights moved
    assert found.max_abs_resid_diff == 0.0
