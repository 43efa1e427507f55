import json
import math

import pytest
from mistudio_common.errors import InvalidArgument
from mistudio_export.formats import jsonio
from mistudio_export.formats.columns import column_batches
from mistudio_export.formats.prd_json import (
    metadata_document,
    write_prd_export,
)
from mistudio_export.records import FeatureLabel
from mistudio_export.validation import validate_export

from tests.export.formats.builders import dashboard, explanation, naming, sae_info

FR_2_3_FIELDS = {
    "model_id", "sae_id", "neuronpedia_id", "hook_point", "d_sae", "d_model", "architecture",
    "training_dataset", "n_training_tokens", "l0", "explained_variance", "created_at",
    "miStudio_version", "export_version",
}  # fmt: skip


def _write(tmp_path, dashboards=None, explanations=(), **kwargs):
    dashboards = dashboards if dashboards is not None else [dashboard(0), dashboard(1)]
    return write_prd_export(
        tmp_path, sae_info(), naming(), column_batches(dashboards), explanations, **kwargs
    )


def _read(path):
    return json.loads(jsonio.read_bytes(path))


def test_layout_is_metadata_features_and_explanations(tmp_path):
    _write(tmp_path)
    names = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.json"))
    assert names == [
        "explanations/explanations.json",
        "features/0.json",
        "features/1.json",
        "metadata.json",
    ]


def test_metadata_has_every_fr_2_3_field(tmp_path):
    _write(tmp_path)
    meta = _read(tmp_path / "metadata.json")
    assert set(meta) >= FR_2_3_FIELDS
    assert meta["neuronpedia_id"] == "gpt2-small/6-mistudio-res-16k"
    assert meta["d_model"] == 8 and meta["n_features"] == 2


def test_metadata_created_at_is_the_callers_value():
    meta = metadata_document(sae_info(), naming(), n_features=0, compressed=False)
    assert meta["created_at"] == "2025-01-15T10:30:00Z"


def test_feature_has_the_fr_2_2_fields_and_the_richer_ones(tmp_path):
    _write(tmp_path, [dashboard(3)])
    doc = _read(tmp_path / "features/3.json")
    assert {
        "feature_index",
        "activations",
        "logits",
        "histogram",
        "statistics",
        "top_tokens",
    } <= set(doc)
    assert {"quantile_groups", "logit_histogram", "top_tokens_metric"} <= set(doc)
    example = doc["activations"][0]
    assert set(example) == {
        "tokens",
        "token_ids",
        "values",
        "max_value",
        "max_token_index",
        "source",
    }
    assert doc["statistics"]["quantiles"][0] == {"level": 0.25, "value": 0.2}
    assert {"dead_feature", "l0_contribution"} <= set(doc["statistics"])
    assert set(doc["top_tokens"][0]) >= {"token", "total_activation", "count", "mean_activation"}


def test_feature_file_name_matches_feature_index(tmp_path):
    _write(tmp_path, [dashboard(7)])
    assert _read(tmp_path / "features/7.json")["feature_index"] == 7


def test_several_explanations_per_feature_are_kept_in_a_stable_order(tmp_path):
    records = [
        explanation(0, "speed", created_at="2025-02-01T00:00:00Z", score=None),
        explanation(0, "motion", created_at="2025-01-01T00:00:00Z"),
    ]
    _write(tmp_path, explanations=records)
    doc = _read(tmp_path / "explanations/explanations.json")
    entry = doc["features"][0]
    assert entry["feature_index"] == 0
    assert [e["description"] for e in entry["explanations"]] == ["motion", "speed"]
    assert set(entry["explanations"][0]) == {
        "id", "description", "method", "model", "score", "created_at"
    }  # fmt: skip
    assert entry["explanations"][1]["score"] is None


def test_compressed_feature_files_are_gzip(tmp_path):
    out = _write(tmp_path, compress_features=True)
    assert (tmp_path / "features/0.json.gz").is_file()
    assert _read(tmp_path / "features/0.json.gz")["feature_index"] == 0
    assert _read(tmp_path / "metadata.json")["feature_file_suffix"] == ".json.gz"
    assert out.n_features == 2


def test_same_input_gives_byte_identical_files(tmp_path):
    records = [explanation(1, "b"), explanation(0, "a")]
    _write(tmp_path / "one", explanations=records, compress_features=True)
    _write(tmp_path / "two", explanations=list(reversed(records)), compress_features=True)
    for path in (tmp_path / "one").rglob("*.*"):
        twin = tmp_path / "two" / path.relative_to(tmp_path / "one")
        assert path.read_bytes() == twin.read_bytes(), path.name


def test_nan_in_a_dashboard_is_refused_naming_feature_and_field(tmp_path):
    bad = dashboard(4)
    bad.statistics.std_activation = math.nan
    with pytest.raises(jsonio.NonFiniteValue) as err:
        _write(tmp_path, [bad])
    assert err.value.field == "/statistics/std_activation"
    assert "feature 4" in str(err.value)


def test_nan_in_a_top_token_is_refused_naming_feature_and_field(tmp_path):
    bad = dashboard(4)
    bad.top_tokens[0].mean_activation = math.nan
    with pytest.raises(jsonio.NonFiniteValue) as err:
        _write(tmp_path, [dashboard(3), bad])
    assert err.value.field == "/top_tokens/0/mean_activation"
    assert "feature 4" in str(err.value)


def test_nan_in_a_histogram_edge_is_refused_naming_feature_and_field(tmp_path):
    bad = dashboard(4)
    bad.logit_histogram.bin_edges[2] = math.nan
    with pytest.raises(jsonio.NonFiniteValue) as err:
        _write(tmp_path, [dashboard(3), bad])
    assert err.value.field == "/logit_histogram/bin_edges/2"
    assert "feature 4" in str(err.value)


def test_duplicate_feature_is_refused(tmp_path):
    with pytest.raises(InvalidArgument):
        _write(tmp_path, [dashboard(1), dashboard(1)])


def test_progress_reports_features_written(tmp_path):
    seen: list[int] = []
    _write(tmp_path, progress=seen.append)
    assert seen == [1, 2]


def test_written_prd_export_validates_clean(tmp_path):
    _write(tmp_path, [dashboard(0), dashboard(1, dead=True)], [explanation(0)])
    report = validate_export(tmp_path)
    assert report.problems == [], report.summary()
    assert report.components == ["prd: ."]


def test_labels_are_exported_with_their_category_and_as_explanations(tmp_path):
    label = FeatureLabel(1, "dogs", "animals", "2025-02-01T00:00:00Z")
    write_prd_export(
        tmp_path,
        sae_info(),
        naming(),
        column_batches([dashboard(0), dashboard(1)]),
        [],
        labels=[label],
    )
    doc = json.loads((tmp_path / "explanations/explanations.json").read_text())
    (entry,) = doc["features"]
    assert (entry["feature_index"], entry["label"], entry["category"]) == (1, "dogs", "animals")
    (expl,) = entry["explanations"]
    assert (expl["description"], expl["method"], expl["score"]) == ("dogs", "mistudio_label", None)
    assert expl["created_at"] == "2025-02-01T00:00:00Z"
    assert validate_export(tmp_path).problems == []


@pytest.mark.parametrize(
    ("spoil", "field"),
    [
        (lambda d: setattr(d.statistics, "max_activation", math.inf), "/statistics/max_activation"),
        (lambda d: d.statistics.quantiles.update({0.5: math.nan}), "/statistics/quantiles/1/value"),
        (lambda d: setattr(d.quantile_groups[1], "bin_max", math.nan),
         "/quantile_groups/1/bin_max"),
        (lambda d: setattr(d.top_negative_logits[1], "value", -math.inf),
         "/logits/top_negative/1/value"),
        (lambda d: d.activation_histogram.bin_edges.__setitem__(0, 1e39), "/histogram/bin_edges/0"),
    ],
)  # fmt: skip
def test_an_unwritable_head_value_is_refused_naming_its_pointer(tmp_path, spoil, field):
    """Head values are checked a batch at a time; a failing check names the value's place."""
    bad = dashboard(4)
    spoil(bad)
    with pytest.raises(jsonio.NonFiniteValue) as err:
        _write(tmp_path, [dashboard(3), bad])
    assert err.value.field == field
    assert "feature 4" in str(err.value)


def test_a_head_value_of_another_type_than_its_fields_is_written_as_it_is(tmp_path):
    odd = dashboard(4)
    odd.activation_histogram.total_count = 1.5  # type: ignore[assignment]
    odd.statistics.max_activation = 4  # an int where a float belongs
    _write(tmp_path, [dashboard(3), odd])
    text = (tmp_path / "features/4.json").read_text()
    assert '"total_count":1.5' in text and '"max_activation":4,' in text
