"""The agreement check compares like with like: both sides' facts built from one activation grid
by each side's own definitions must agree everywhere, and a real difference must show."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bench.float_ambiguity import FloatAmbiguity
from bench.measure import agreement

K, WINDOW = 20, 8
Grid = np.ndarray[Any, Any]


@pytest.fixture
def grid() -> Grid:
    """[rows, pos] activations of one feature; column 0 is BOS and fires hard (never counted)."""
    rng = np.random.default_rng(0)
    acts = np.maximum(rng.normal(size=(40, 32)) - 1.2, 0).astype(np.float32)
    acts[:, 0] = 50.0
    return acts


def flips(tokens: int = 0) -> FloatAmbiguity:
    """Feature 0 has ``tokens`` tokens whose firing float rounding decides."""
    return FloatAmbiguity(np.array([tokens]), 1e-6 if tokens else 0.0, 1e-5)


def logits() -> dict[str, list[float]]:
    return {"pos_ids": [5, 9, 2], "pos_values": [1.23456, 1.1, 0.9]} | {
        "neg_ids": [7, 1, 3],
        "neg_values": [-1.5, -1.2, -1.0],
    }


def theirs_facts(acts: Grid) -> dict[str, Any]:
    """SAEDashboard: plain top-k over all positions, each example the whole prompt, 3 decimals;
    frequency over all tokens, as a ``{:.3%}`` string parsed back."""
    masked = acts.copy()
    masked[:, 0] = 0
    flat = np.argsort(-masked.ravel(), kind="stable")[:K]
    rows = flat // acts.shape[1]
    shown = np.round(np.round(masked, 4), 3)  # 4 decimals in its sequence data, then 3
    values = sorted((float(shown.ravel()[i]) for i in flat), reverse=True)
    frac = float(f"{(masked > 0).sum() / masked.size:.3%}".rstrip("%")) / 100
    rounded = {k: [round(v, 3) for v in vs] if "values" in k else vs for k, vs in logits().items()}
    return rounded | {
        "top_values": values,
        "prompt_maxima": sorted({float(shown[r, 1:].max()) for r in rows}, reverse=True),
        "max_activation": values[0],
        "frequency": frac,
    }


def ours_facts(acts: Grid) -> dict[str, Any]:
    """Ours: the best peaks (row maximum within +-WINDOW, earliest wins), full float32; frequency
    over non-special tokens."""
    text = acts[:, 1:]
    peaks = []
    for row in text:
        for t, v in enumerate(row):
            near = row[max(0, t - WINDOW) : t + WINDOW + 1]
            if v > 0 and v == near.max() and t == max(0, t - WINDOW) + int(near.argmax()):
                peaks.append(float(v))
    top = sorted(peaks, reverse=True)[:K]
    nonzero = int((text > 0).sum())
    return logits() | {
        "top_values": top,
        "max_activation": top[0],
        "frequency": nonzero / text.size,
        "nonzero_count": nonzero,
    }


def test_each_sides_definitions_of_one_grid_agree_on_every_check(grid: Grid) -> None:
    ours, theirs = ours_facts(grid), theirs_facts(grid)
    assert ours["top_values"] != pytest.approx(theirs["top_values"], abs=1e-3)  # by definition
    assert abs(ours["frequency"] - theirs["frequency"]) > 1e-4  # different denominators
    out = agreement({"0": ours}, {"0": theirs}, logit_k=3, n_tokens=grid.size, ambiguity=flips())
    assert out["n_features_compared"] == 1
    checks = {k: v for k, v in out.items() if isinstance(v, dict)}
    assert len(checks) == 8
    assert {k: v["fraction_agreeing"] for k, v in checks.items()} == dict.fromkeys(checks, 1.0)
    assert out["top_example_prompt_maxima"]["n_values_compared"] >= 5
    assert out["top_example_values_above_their_kth"]["n_values_compared"] >= 10
    assert out["activation_frequency"]["beyond_quantum"] == []


def test_a_changed_maximum_is_reported_with_its_size(grid: Grid) -> None:
    ours, theirs = ours_facts(grid), theirs_facts(grid)
    ours["max_activation"] += 0.01
    out = agreement({"0": ours}, {"0": theirs}, logit_k=3, n_tokens=grid.size, ambiguity=flips())
    assert out["max_activation"]["fraction_agreeing"] == 0.0
    assert out["max_activation"]["max_abs_diff"] == pytest.approx(0.01, abs=6e-4)


def test_a_missing_prompt_maximum_is_reported(grid: Grid) -> None:
    ours, theirs = ours_facts(grid), theirs_facts(grid)
    ours["top_values"] = ours["top_values"][1:]
    out = agreement({"0": ours}, {"0": theirs}, logit_k=3, n_tokens=grid.size, ambiguity=flips())
    assert out["top_example_prompt_maxima"]["fraction_agreeing"] == 0.0


def test_a_different_logit_token_is_reported(grid: Grid) -> None:
    ours, theirs = ours_facts(grid), theirs_facts(grid)
    ours["neg_ids"] = [7, 4, 3]  # token 4 at -1.2 instead of 1: far from their k-th, -1.0
    out = agreement({"0": ours}, {"0": theirs}, logit_k=3, n_tokens=grid.size, ambiguity=flips())
    assert out["logit_lens_neg_ids"]["fraction_agreeing"] == 0.0
    assert out["logit_lens_neg_ids"]["max_abs_diff"] == pytest.approx(0.2)
    assert out["logit_lens_neg_ids"]["disagreeing_features"] == [0]
    assert out["logit_lens_pos_ids"]["fraction_agreeing"] == 1.0
    assert out["logit_lens_pos_ids"]["disagreeing_features"] == []


def test_a_tie_at_the_kth_logit_is_not_a_disagreement(grid: Grid) -> None:
    ours, theirs = ours_facts(grid), theirs_facts(grid)
    ours["neg_ids"] = [7, 1, 4]  # token 4 instead of 3, both at the k-th value -1.0
    ours["neg_values"][2] = -1.0002  # and within theirs' rounding of it
    out = agreement({"0": ours}, {"0": theirs}, logit_k=3, n_tokens=grid.size, ambiguity=flips())
    assert out["logit_lens_neg_ids"]["fraction_agreeing"] == 1.0
    assert out["logit_lens_neg_ids"]["max_abs_diff"] == pytest.approx(2e-4)


def test_a_count_off_by_the_float_ambiguous_tokens_agrees_and_shows_both_counts(
    grid: Grid,
) -> None:
    ours, theirs = ours_facts(grid), theirs_facts(grid)
    ours["nonzero_count"] += 3  # 3 / 1280 tokens: far beyond theirs' 1e-5 quantisation
    out = agreement({"0": ours}, {"0": theirs}, logit_k=3, n_tokens=grid.size, ambiguity=flips(3))
    freq = out["activation_frequency"]
    assert freq["fraction_agreeing"] == 1.0
    assert freq["max_abs_diff"] == pytest.approx(3 / grid.size, abs=1e-5)
    assert freq["float_ambiguous_tokens_total"] == 3
    assert freq["beyond_quantum"] == [
        {
            "feature": 0,
            "ours_count": ours["nonzero_count"],
            "theirs_count": pytest.approx(ours["nonzero_count"] - 3, abs=0.1),
            "float_ambiguous_tokens": 3,
        }
    ]


def test_a_miscount_beyond_the_float_ambiguous_tokens_disagrees(grid: Grid) -> None:
    ours, theirs = ours_facts(grid), theirs_facts(grid)
    ours["nonzero_count"] += 4
    out = agreement({"0": ours}, {"0": theirs}, logit_k=3, n_tokens=grid.size, ambiguity=flips(3))
    assert out["activation_frequency"]["fraction_agreeing"] == 0.0
    assert out["activation_frequency"]["disagreeing_features"] == [0]
