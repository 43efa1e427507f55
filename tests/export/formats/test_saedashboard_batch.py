import json
import math

import numpy as np
import pytest
from mistudio_export.formats import jsonio
from mistudio_export.formats.columns import column_batches
from mistudio_export.formats.saedashboard_batch import (
    python_round,
    rounded_apart,
    write_saedashboard_batches,
)
from mistudio_export.validation import validate_export

from tests.export.formats.builders import dashboard, naming, sae_info

# reference/neuronpedia-format.md §4a: the keys neuronpedia-runner writes.
REFERENCE_FEATURE_KEYS = {
    "feature_index", "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
    "correlated_neurons_indices", "correlated_neurons_l1", "correlated_neurons_pearson",
    "correlated_features_indices", "correlated_features_l1", "correlated_features_pearson",
    "neg_str", "neg_values", "pos_str", "pos_values", "frac_nonzero",
    "freq_hist_data_bar_values", "freq_hist_data_bar_heights", "logits_hist_data_bar_heights",
    "logits_hist_data_bar_values", "n_prompts_total", "n_tokens_in_prompt", "dataset",
    "decoder_weights_dist", "activations", "vector",
}  # fmt: skip
REFERENCE_ACTIVATION_KEYS = {
    "bin_min", "bin_max", "bin_contains", "tokens", "values", "qualifying_token_index",
    "dfa_values", "dfa_maxValue", "dfa_targetIndex",
}  # fmt: skip


def _write(tmp_path, dashboards, **kwargs):
    return write_saedashboard_batches(
        tmp_path, sae_info(), naming(), column_batches(dashboards), **kwargs
    )


def _entry(tmp_path, d):
    _write(tmp_path, [d])
    (entry,) = json.loads((tmp_path / "batch-0.json").read_text())["features"]
    return entry


def test_batch_file_holds_model_layer_set_and_features(tmp_path):
    _write(tmp_path, [dashboard(0)])
    doc = json.loads((tmp_path / "batch-0.json").read_text())
    assert set(doc) == {"model_id", "layer", "sae_set", "sae_id_suffix", "features"}
    assert (doc["model_id"], doc["layer"], doc["sae_set"]) == ("gpt2-small", 6, "mistudio-res-16k")


def test_feature_has_every_reference_key(tmp_path):
    assert set(_entry(tmp_path, dashboard(0))) == REFERENCE_FEATURE_KEYS


def test_activation_has_every_reference_key(tmp_path):
    for activation in _entry(tmp_path, dashboard(0))["activations"]:
        assert set(activation) == REFERENCE_ACTIVATION_KEYS


def test_panels_without_data_are_empty_lists(tmp_path):
    entry = _entry(tmp_path, dashboard(0))
    for key in ("neuron_alignment_indices", "correlated_neurons_pearson", "decoder_weights_dist"):
        assert entry[key] == []


def test_top_group_uses_minus_one_bounds_and_groups_their_bins(tmp_path):
    acts = _entry(tmp_path, dashboard(0))["activations"]
    assert (acts[0]["bin_min"], acts[0]["bin_max"], acts[0]["bin_contains"]) == (-1, 3.5, -1)
    assert (acts[-1]["bin_min"], acts[-1]["bin_max"], acts[-1]["bin_contains"]) == (0, 1, 0.8)
    assert acts[0]["qualifying_token_index"] == 2


def test_float_lists_are_rounded_to_five_decimals(tmp_path):
    d = dashboard(0)
    d.top_examples[0].values[1] = 0.123456789
    d.top_positive_logits[0].value = 3.1415926
    _write(tmp_path, [d])
    feature = json.loads((tmp_path / "batch-0.json").read_text())["features"][0]
    assert feature["activations"][0]["values"][1] == 0.12346
    assert feature["pos_values"][0] == 3.14159


def test_sampling_facts_are_repeated_per_feature(tmp_path):
    entry = _entry(tmp_path, dashboard(0))
    assert (entry["n_prompts_total"], entry["n_tokens_in_prompt"]) == (64, 128)
    assert entry["dataset"] == "roneneldan/TinyStories"


def test_features_are_split_into_batches_of_the_given_size(tmp_path):
    out = _write(tmp_path, [dashboard(i) for i in range(5)], features_per_batch=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "batch-0.json",
        "batch-1.json",
        "batch-2.json",
    ]
    assert out.n_features == 5
    last = json.loads((tmp_path / "batch-2.json").read_text())
    assert [f["feature_index"] for f in last["features"]] == [4]


def test_same_input_gives_byte_identical_files(tmp_path):
    _write(tmp_path / "one", [dashboard(0), dashboard(1, dead=True)])
    _write(tmp_path / "two", [dashboard(0), dashboard(1, dead=True)])
    assert (tmp_path / "one/batch-0.json").read_bytes() == (
        tmp_path / "two/batch-0.json"
    ).read_bytes()


def test_written_batches_validate_clean(tmp_path):
    _write(tmp_path, [dashboard(0), dashboard(1, dead=True)])
    report = validate_export(tmp_path)
    assert report.problems == [], report.summary()
    assert report.components == ["saedashboard: ."]


def test_small_log_scale_bin_centres_stay_distinct_and_validate(tmp_path):
    d = dashboard(0)
    edges = [1e-7 * 10 ** (i / 2) for i in range(11)]  # log-scale, 1e-7 .. 1e-2
    d.activation_histogram.bin_edges, d.activation_histogram.counts = edges, [1] * 10
    d.activation_histogram.total_count = d.activation_histogram.nonzero_count = 10
    _write(tmp_path, [d])
    centres = json.loads((tmp_path / "batch-0.json").read_text())["features"][0][
        "freq_hist_data_bar_values"
    ]
    assert len(set(centres)) == 10 and centres == sorted(centres)
    assert [p.code for p in validate_export(tmp_path).problems] == []


def _round_apart_reference(xs):
    """The per-histogram rounding the batch rounding must equal: ``round`` at 5 decimals or
    the fewest more that keep distinct centres distinct."""
    for decimals in range(5, 18):
        out = [round(x, decimals) for x in xs]
        if len(set(out)) == len(set(xs)):
            return out
    return list(xs)


def _bits(values):
    return np.array(values, np.float64).view(np.int64).tolist()


@pytest.mark.parametrize("decimals", range(5, 18))
def test_python_round_gives_rounds_result_to_the_bit(decimals):
    rng = np.random.default_rng(decimals)
    ties = (np.arange(-500, 500) + 0.5) / 10.0**decimals  # the halves numpy may round apart
    values = np.concatenate(
        [
            rng.normal(0, 1, 2000) * 10.0 ** rng.integers(-12, 12, 2000),
            ties,
            np.nextafter(ties, np.inf),
            np.nextafter(ties, -np.inf),
            [2.675, 0.125, -0.0, 1e300, 2.0**52 + 0.5, 5e-324],
        ]
    )
    expected = [round(v, decimals) for v in values.tolist()]
    assert _bits(python_round(values, decimals)) == _bits(expected)


def test_bin_centres_are_rounded_apart_per_histogram_as_round_does():
    rng = np.random.default_rng(0)
    runs = [
        [1e-7 * 10 ** (i / 2) for i in range(10)],  # log-scale: needs more decimals
        [0.5, 0.5, 0.25],  # equal centres stay equal
        [],
        rng.uniform(-3, 3, 40).tolist(),
        [1.000001, 1.000002, 1.0000015],
        [1e-20, 2e-20],  # no decimals up to 17 keep these apart
    ]
    got = rounded_apart(
        np.array([x for r in runs for x in r], np.float64), np.array([len(r) for r in runs])
    )
    expected = [x for r in runs for x in _round_apart_reference(r)]
    assert _bits(got) == _bits(expected)


@pytest.mark.parametrize(
    ("spoil", "field"),
    [
        (lambda d: setattr(d.top_negative_logits[1], "value", math.nan),
         "/features/1/neg_values/1"),
        (lambda d: setattr(d.statistics, "activation_frequency", math.inf),
         "/features/1/frac_nonzero"),
        (lambda d: d.activation_histogram.bin_edges.__setitem__(2, math.nan),
         "/features/1/freq_hist_data_bar_values/1"),
        (lambda d: d.logit_histogram.bin_edges.__setitem__(0, 1e39),
         "/features/1/logits_hist_data_bar_values/0"),
    ],
)  # fmt: skip
def test_an_unwritable_value_is_refused_naming_its_pointer(tmp_path, spoil, field):
    """Entry values are checked a batch at a time; a failing check names the value's place."""
    bad = dashboard(4)
    spoil(bad)
    with pytest.raises(jsonio.NonFiniteValue) as err:
        _write(tmp_path, [dashboard(3), bad])
    assert err.value.field == field
    assert "batch-0.json" in str(err.value)


def test_heights_of_another_type_than_int_are_written_as_jsonio_writes_them(tmp_path):
    d = dashboard(0)
    d.activation_histogram.counts = [5.0, 3, 2, 1]  # type: ignore[list-item]
    _write(tmp_path, [d])
    text = (tmp_path / "batch-0.json").read_text()
    assert '"freq_hist_data_bar_heights":[5.0,3.0,2.0,1.0]' in text  # a list of numbers: floats
