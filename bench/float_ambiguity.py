"""Tokens whose firing float32 rounding decides, per feature: the allowance of the agreement
check on ``activation_frequency``.

Our export reads the hook with the lean forward (``fast_llama``), SAEDashboard with
TransformerLens; the two sum in different orders, so their residuals differ by float32 rounding
(about 1e-5 at stories260K's blocks.2), and a pre-activation within that of 0 fires on one side
only. Rather than guess a tolerance, the bench encodes both residuals of the same tokens, each the
way its side does, and counts per feature the non-special tokens where exactly one side fires:
the two exported counts can differ by at most that many tokens. Ours is the export's own path
(the same 32-row forwards, and ``encode_features`` gives the bits of the pass's tiled encode);
theirs uses the encoder columns its run encoded each feature with (``TheirEncode``), not the SAE
folder's: the runner folds the decoder's row norms into them again at every feature batch
(``saedashboard_job.EncoderColumns``), which moves a pre-activation near 0 by an ulp or so.
Run in the bench's process, outside both timed runs, once per size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from bench.inputs import BenchInputs

THEIR_ROWS = 32
"""SAEDashboard's rows per forward pass and encode (``n_prompts_in_forward_pass``)."""
THEIR_FEATURES = 128
"""Features it encodes at a time (``n_features_at_a_time``)."""


class TheirEncode(NamedTuple):
    """What SAEDashboard's run encoded (``saedashboard_job``): its cached hook activations and,
    per feature, the encoder column and bias it encoded that feature with."""

    acts: np.ndarray[Any, Any]  # [rows, context, d_in]
    W_enc: np.ndarray[Any, Any]  # [d_in, d_sae]
    b_enc: np.ndarray[Any, Any]  # [d_sae]


@dataclass(frozen=True)
class FloatAmbiguity:
    """Per feature, the non-special tokens where exactly one side fires."""

    tokens: np.ndarray[Any, Any]  # [d_sae] int64
    max_flipped_activation: float
    """The largest activation such a token has on the side that fires it: float noise, where a
    feature's typical activation is ~1."""
    max_abs_resid_diff: float
    """The largest difference of the two residuals at any non-special token."""


def float_ambiguous_tokens(inputs: BenchInputs, theirs: TheirEncode) -> FloatAmbiguity:
    """Counts, for ``inputs``, the tokens where exactly one side fires, given what SAEDashboard's
    run encoded (``theirs``)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these small products cost more CPU waiting on a second thread
    try:
        return _count(inputs, theirs)
    finally:
        torch.set_num_threads(threads)


def _count(inputs: BenchInputs, theirs: TheirEncode) -> FloatAmbiguity:
    from mistudio_compute.model_access import capture_hook, load_model
    from mistudio_compute.sae.loading import load_sae

    loaded = load_model(inputs.model.model_ref, device="cpu")
    sae = load_sae(inputs.sae_folder)
    ids = (loaded.bos_token_id, loaded.eos_token_id, loaded.pad_token_id)
    special = torch.tensor([i for i in ids if i is not None])
    tokens = torch.from_numpy(np.load(inputs.token_file).astype(np.int64))  # [rows, context]
    every = torch.arange(sae.d_sae)
    w_enc, b_enc = torch.from_numpy(theirs.W_enc), torch.from_numpy(theirs.b_enc)
    their_w = [(w_enc[:, f].contiguous(), b_enc[f]) for f in _chunks(sae.d_sae)]
    flips = torch.zeros(sae.d_sae, dtype=torch.int64)
    max_act = max_dx = 0.0
    for lo in range(0, tokens.shape[0], THEIR_ROWS):
        batch = tokens[lo : lo + THEIR_ROWS]  # [B, T]
        special_at = torch.isin(batch, special).flatten()  # [B*T]
        ours_x = capture_hook(loaded, batch, inputs.model.hook).flatten(0, 1)  # as the export
        theirs_x = torch.from_numpy(theirs.acts[lo : lo + THEIR_ROWS]).flatten(0, 1)  # [B*T, d_in]
        z = sae.encode_features(ours_x, every)  # [B*T, d_sae], the export's bits
        for f, (w, b) in zip(_chunks(sae.d_sae), their_w, strict=True):
            pre = theirs_x @ w + b  # [B*T, F]: SAELens's standard encode, before its ReLU
            flipped = (z[:, f] > 0) != (pre > 0)
            flipped[special_at] = False
            flips[f] += flipped.sum(0)
            if flipped.any():  # the firing side's activation (z is ours after its ReLU)
                fired = torch.maximum(z[:, f][flipped], pre[flipped].clamp_min(0))
                max_act = max(max_act, float(fired.max()))
        dx = (ours_x - theirs_x)[~special_at].abs()
        max_dx = max(max_dx, float(dx.max()) if dx.numel() else 0.0)
    return FloatAmbiguity(flips.numpy(), max_act, max_dx)


def _chunks(d_sae: int) -> list[slice]:
    """SAEDashboard's feature batches: ``THEIR_FEATURES`` at a time; ``FeatureMaskingContext``
    encodes each with a copy of those columns of its ``W_enc`` and ``b_enc`` (the bench's SAE
    is a standard one with ``apply_b_dec_to_input`` off)."""
    return [slice(lo, lo + THEIR_FEATURES) for lo in range(0, d_sae, THEIR_FEATURES)]
