import json
import math

import pytest
from mistudio_export.formats import jsonio
from mistudio_export.formats.columns import column_batches
from mistudio_export.formats.upload_payloads import (
    truncate_around,
    write_upload_payloads,
)
from mistudio_export.validation import validate_export

from tests.export.formats.builders import dashboard, example, explanation, naming


def _write(tmp_path, dashboards, explanations=(), **kwargs):
    return write_upload_payloads(
        tmp_path, naming(), column_batches(dashboards), explanations, **kwargs
    )


def _body(tmp_path, n=0):
    return json.loads((tmp_path / f"upload-batch-{n}.json").read_text())


def test_body_names_model_source_and_features(tmp_path):
    _write(tmp_path, [dashboard(0)])
    body = _body(tmp_path)
    assert (body["modelId"], body["source"]) == ("gpt2-small", "6-mistudio-res-16k")
    feature = body["features"][0]
    assert set(feature) == {
        "index", "density", "topLogits", "bottomLogits", "activations", "explanations"
    }  # fmt: skip
    assert feature["density"] == 0.011
    assert feature["topLogits"][0] == {"token": "fast", "value": 3.45}


def test_at_most_128_features_per_request(tmp_path):
    out = _write(tmp_path, [dashboard(i) for i in range(130)])
    assert [len(_body(tmp_path, n)["features"]) for n in (0, 1)] == [128, 2]
    assert out.n_features == 130


def test_at_most_20_top_and_bottom_logits(tmp_path):
    d = dashboard(0)
    d.top_positive_logits = d.top_positive_logits * 15
    for rank, e in enumerate(d.top_positive_logits, start=1):
        e.rank = rank
    _write(tmp_path, [d])
    assert len(_body(tmp_path)["features"][0]["topLogits"]) == 20


def test_activations_carry_quantile_bounds_and_fraction(tmp_path):
    _write(tmp_path, [dashboard(0)])
    acts = _body(tmp_path)["features"][0]["activations"]
    top = acts[0]
    assert (top["quantileMin"], top["quantileMax"]) == (1.25, 3.5)
    assert top["quantileFraction"] == pytest.approx(10 / 11, rel=1e-6)
    assert (acts[-1]["quantileMin"], acts[-1]["quantileMax"], acts[-1]["quantileFraction"]) == (
        0.0,
        1.0,
        0.8,
    )
    assert all(0 <= a["quantileFraction"] <= 1 for a in acts)


def test_long_example_is_cut_to_1024_tokens_around_its_max_and_noted(tmp_path):
    d = dashboard(0)
    long = example(9.0)
    long.tokens, long.values = ["t"] * 1500, [0.0] * 1500
    long.values[1400] = 9.0
    d.top_examples[0] = long
    out = _write(tmp_path, [d])
    cut = _body(tmp_path)["features"][0]["activations"][0]
    assert len(cut["tokens"]) == len(cut["values"]) == 1024
    assert max(cut["values"]) == 9.0
    assert any("1500 tokens was cut" in note for note in out.notes)


def test_truncate_around_keeps_the_centre_inside_the_window():
    tokens, values, start = truncate_around(list("abcdefghij"), list(range(10)), 9, 4)
    assert (tokens, values, start) == (list("ghij"), [6, 7, 8, 9], 6)
    assert truncate_around(list("abc"), [1, 2, 3], 0, 4) == (list("abc"), [1, 2, 3], 0)


def test_explanations_are_cut_to_512_characters_and_noted(tmp_path):
    out = _write(tmp_path, [dashboard(0)], [explanation(0, "x" * 600)])
    (expl,) = _body(tmp_path)["features"][0]["explanations"]
    assert len(expl["text"]) == 512
    assert expl["methodName"] == "np_max-act-logits"
    assert "modelName" not in expl  # the route would insert it under a name its table lacks
    assert any("600 characters" in note for note in out.notes)


def test_dead_feature_is_skipped_and_listed(tmp_path):
    out = _write(tmp_path, [dashboard(0), dashboard(1, dead=True)])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["skipped_features"] == [1]
    assert [f["index"] for f in _body(tmp_path)["features"]] == [0]
    assert out.n_features == 1


def test_manifest_lists_payload_files_in_order(tmp_path):
    _write(tmp_path, [dashboard(i) for i in range(5)], features_per_request=2)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["files"] == [
        "upload-batch-0.json",
        "upload-batch-1.json",
        "upload-batch-2.json",
    ]
    assert manifest["endpoint"] == "feature/upload-batch"


def test_written_payloads_validate_clean(tmp_path):
    _write(tmp_path, [dashboard(0), dashboard(1, dead=True)], [explanation(0)])
    report = validate_export(tmp_path)
    assert report.problems == [], report.summary()
    assert report.components == ["upload-payloads: ."]


def test_human_explanation_has_no_method_or_model_name_and_validates(tmp_path):
    human = explanation(0, "fires on speed", method="human", explainer_model="")
    _write(tmp_path, [dashboard(0)], [human])
    (expl,) = _body(tmp_path)["features"][0]["explanations"]
    assert expl == {"text": "fires on speed"}  # the route's type check skips a missing method
    assert validate_export(tmp_path).problems == []


def test_explanations_neuronpedia_lacks_are_left_out_and_noted(tmp_path):
    heuristic = explanation(0, "fires on ' dog'", method="mistudio_top-tokens", explainer_model="")
    out = _write(tmp_path, [dashboard(0)], [explanation(0), heuristic])
    texts = [e["text"] for e in _body(tmp_path)["features"][0]["explanations"]]
    assert texts == ["words about speed"]
    assert any("mistudio_top-tokens" in note for note in out.notes)


def test_body_keys_are_those_the_upload_route_reads(tmp_path):
    """apps/webapp/app/api/feature/upload-batch/route.tsx: uploadBatchSchema's keys."""
    _write(tmp_path, [dashboard(0)], [explanation(0)])
    body = _body(tmp_path)
    assert set(body) == {"modelId", "source", "features"}
    (feature,) = body["features"]
    assert set(feature) <= {
        "index", "density", "topLogits", "bottomLogits", "explanations", "activations"
    }  # fmt: skip
    assert set(feature["activations"][0]) <= {
        "tokens", "values", "quantileMax", "quantileMin", "quantileFraction"
    }  # fmt: skip
    assert set(feature["explanations"][0]) <= {"text", "methodName", "modelName"}


def test_nan_in_a_logit_is_refused_naming_feature_and_field(tmp_path):
    bad = dashboard(4)
    bad.top_negative_logits[1].value = math.nan
    with pytest.raises(jsonio.NonFiniteValue) as err:
        _write(tmp_path, [dashboard(3), bad])
    assert err.value.field == "/bottomLogits/1/value"
    assert "feature 4" in str(err.value)
