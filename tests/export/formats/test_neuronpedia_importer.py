import json
from pathlib import Path

import pytest
from mistudio_common.errors import InvalidArgument
from mistudio_export.formats import jsonio
from mistudio_export.formats.columns import column_batches
from mistudio_export.formats.neuronpedia_importer import (
    NOT_NULL,
    activation_ids,
    bin_centres,
    write_importer_export,
)
from mistudio_export.formats.schemas import load_schema
from mistudio_export.records import FeatureLabel
from mistudio_export.validation import validate_export

from tests.export.formats.builders import dashboard, explanation, naming, sae_info

# Key sets of the format-B lines in reference/neuronpedia-format.md §5, plus createdAt
# ("omitted here but present in real output"); the explanation line without the optional embedding.
REFERENCE_NEURON_KEYS = {
    "modelId", "layer", "index", "creatorId", "maxActApprox", "hasVector", "vector", "vectorLabel",
    "vectorDefaultSteerStrength", "hookName", "topkCosSimIndices", "topkCosSimValues",
    "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
    "correlated_neurons_indices", "correlated_neurons_pearson", "correlated_neurons_l1",
    "correlated_features_indices", "correlated_features_pearson", "correlated_features_l1",
    "neg_str", "neg_values", "pos_str", "pos_values", "frac_nonzero",
    "freq_hist_data_bar_heights", "freq_hist_data_bar_values", "logits_hist_data_bar_heights",
    "logits_hist_data_bar_values", "decoder_weights_dist", "sourceSetName", "createdAt",
}  # fmt: skip
REFERENCE_ACTIVATION_KEYS = {
    "id", "tokens", "index", "layer", "modelId", "maxValue", "maxValueTokenIndex", "minValue",
    "values", "creatorId", "dataSource", "dataIndex", "dfaValues", "dfaTargetIndex", "dfaMaxValue",
    "lossValues", "logitContributions", "binMin", "binMax", "binContains", "qualifyingTokenIndex",
    "zIndices", "zValues", "createdAt",
}  # fmt: skip
REFERENCE_EXPLANATION_KEYS = {
    "id", "modelId", "layer", "index", "description", "authorId", "typeName",
    "explanationModelName", "createdAt",
}  # fmt: skip


def _write(root: Path, dashboards=None, explanations=(), **kwargs):
    dashboards = dashboards if dashboards is not None else [dashboard(0), dashboard(1)]
    return write_importer_export(
        root, sae_info(), naming(), column_batches(dashboards), explanations, **kwargs
    )


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in jsonio.read_bytes(path).decode().splitlines()]


SOURCE = Path("gpt2-small/6-mistudio-res-16k")


def _neuron_row(root: Path, d) -> dict:
    _write(root, [d])
    (row,) = _rows(root / SOURCE / "features/batch-0.jsonl.gz")
    return row


def _activation_rows(root: Path, d) -> list[dict]:
    _write(root, [d])
    return _rows(root / SOURCE / "activations/batch-0.jsonl.gz")


def test_layout_is_model_and_source_folders_with_gzipped_batches(tmp_path):
    _write(tmp_path, explanations=[explanation(0)])
    names = sorted(p.relative_to(tmp_path / SOURCE).as_posix() for p in tmp_path.rglob("*.*"))
    assert names == [
        "activations/batch-0.jsonl.gz",
        "explanations/batch-0.jsonl.gz",
        "features/batch-0.jsonl.gz",
        "model.jsonl",
        "release.jsonl",
        "source.jsonl",
        "sourceset.jsonl",
    ]


def test_neuron_row_keys_match_the_reference(tmp_path):
    assert set(_neuron_row(tmp_path, dashboard(0))) == REFERENCE_NEURON_KEYS


def test_activation_row_keys_match_the_reference(tmp_path):
    rows = _activation_rows(tmp_path, dashboard(0))
    assert {frozenset(r) for r in rows} == {frozenset(REFERENCE_ACTIVATION_KEYS)}


def test_explanation_row_keys_match_the_reference(tmp_path):
    _write(tmp_path, explanations=[explanation(0)])
    (row,) = _rows(tmp_path / SOURCE / "explanations/batch-0.jsonl.gz")
    assert set(row) == REFERENCE_EXPLANATION_KEYS
    assert row["typeName"] == "np_max-act-logits" and row["explanationModelName"] == "gpt-4o-mini"
    assert row["authorId"] == "clkht01d40000jv08hvalcvly"


@pytest.mark.parametrize(
    ("stream", "table"),
    [("features", "Neuron"), ("activations", "Activation"), ("explanations", "Explanation")],
)
def test_every_line_has_the_same_keys_and_filled_not_null_columns(tmp_path, stream, table):
    _write(tmp_path, [dashboard(0), dashboard(1, dead=True)], [explanation(0), explanation(1)])
    rows = _rows(tmp_path / SOURCE / stream / "batch-0.jsonl.gz")
    assert len({frozenset(r) for r in rows}) == 1
    for row in rows:
        assert all(row[column] is not None for column in NOT_NULL[table])


def test_rows_carry_model_id_source_id_and_index_as_text(tmp_path):
    row = _neuron_row(tmp_path, dashboard(5))
    assert (row["modelId"], row["layer"], row["index"]) == ("gpt2-small", "6-mistudio-res-16k", "5")


def test_histograms_are_written_as_bin_centres(tmp_path):
    row = _neuron_row(tmp_path, dashboard(0))
    assert row["freq_hist_data_bar_values"] == bin_centres([0.1, 0.5, 1.0, 2.0, 4.0])
    assert row["freq_hist_data_bar_values"] == [0.3, 0.75, 1.5, 3.0]
    assert row["freq_hist_data_bar_heights"] == [5, 3, 2, 1]
    assert row["logits_hist_data_bar_values"] == [-0.5, 0.5]


def test_density_logits_and_max_act_approx_come_from_the_dashboard(tmp_path):
    row = _neuron_row(tmp_path, dashboard(0))
    assert row["frac_nonzero"] == 0.011
    assert row["pos_str"] == ["fast", "swift"] and row["neg_values"] == [-2.875, -2.5]
    assert row["maxActApprox"] == 3.5


def test_top_examples_form_the_minus_one_max_minus_one_section(tmp_path):
    rows = _activation_rows(tmp_path, dashboard(0))
    top = rows[:10]
    assert {(r["binMin"], r["binMax"], r["binContains"]) for r in top} == {(-1.0, 3.5, -1.0)}


def test_quantile_groups_keep_their_bin_values(tmp_path):
    rows = _activation_rows(tmp_path, dashboard(0))
    assert [(r["binMin"], r["binMax"], r["binContains"]) for r in rows[10:]] == [
        (1.0, 2.0, 0.2),
        (1.0, 2.0, 0.2),
        (0.0, 1.0, 0.8),
    ]


def test_activation_max_min_and_index_are_computed_from_values(tmp_path):
    row = _activation_rows(tmp_path, dashboard(0))[0]
    assert (row["maxValue"], row["maxValueTokenIndex"], row["minValue"]) == (3.5, 2, 0.0)
    assert row["qualifyingTokenIndex"] == 2
    assert row["creatorId"] == "clkht01d40000jv08hvalcvly"


def test_activation_ids_are_short_unique_and_stable(tmp_path):
    first = [r["id"] for r in _activation_rows(tmp_path, dashboard(0))]
    again = [r["id"] for r in _activation_rows(tmp_path, dashboard(0))]
    assert first == again
    assert len(set(first)) == len(first)
    assert all(len(i) <= 25 and i.startswith("c") for i in first)


def test_batches_hold_features_by_index_range(tmp_path):
    _write(tmp_path, [dashboard(0), dashboard(1), dashboard(2), dashboard(5)], batch_size=2)
    features = tmp_path / SOURCE / "features"
    assert sorted(p.name for p in features.iterdir()) == [
        "batch-0.jsonl.gz",
        "batch-1.jsonl.gz",
        "batch-2.jsonl.gz",
    ]
    assert [r["index"] for r in _rows(features / "batch-2.jsonl.gz")] == ["5"]


def test_default_batch_holds_1024_features(tmp_path):
    _write(tmp_path, [dashboard(1023, dead=True), dashboard(1024, dead=True)])
    features = tmp_path / SOURCE / "features"
    assert [r["index"] for r in _rows(features / "batch-0.jsonl.gz")] == ["1023"]
    assert [r["index"] for r in _rows(features / "batch-1.jsonl.gz")] == ["1024"]


def test_dashboards_out_of_batch_order_are_refused(tmp_path):
    with pytest.raises(InvalidArgument) as err:
        _write(tmp_path, [dashboard(0), dashboard(3), dashboard(1)], batch_size=2)
    assert "ascending" in err.value.fix


def test_metadata_rows_use_only_prisma_fields(tmp_path):
    _write(tmp_path)
    for name, schema in [
        ("model.jsonl", "np_model"),
        ("sourceset.jsonl", "np_source_set"),
        ("source.jsonl", "np_source"),
        ("release.jsonl", "np_release"),
    ]:
        (row,) = _rows(tmp_path / SOURCE / name)
        assert set(row) <= set(load_schema(schema)["properties"]), name


def test_source_row_records_the_dashboard_sampling(tmp_path):
    _write(tmp_path)
    (row,) = _rows(tmp_path / SOURCE / "source.jsonl")
    assert (row["id"], row["setName"]) == ("6-mistudio-res-16k", "mistudio-res-16k")
    assert (row["num_prompts"], row["num_tokens_in_prompt"]) == (64, 128)
    assert row["dataset"] == "roneneldan/TinyStories"


def test_same_input_gives_byte_identical_files(tmp_path):
    _write(tmp_path / "one", explanations=[explanation(0), explanation(1)])
    _write(tmp_path / "two", explanations=[explanation(1), explanation(0)])
    for path in (tmp_path / "one").rglob("*.*"):
        assert (
            path.read_bytes()
            == (tmp_path / "two" / path.relative_to(tmp_path / "one")).read_bytes()
        )


def test_explanation_without_dashboard_is_noted(tmp_path):
    out = _write(tmp_path, [dashboard(0)], [explanation(9)])
    assert out.notes and "feature 9" in out.notes[0]


def test_written_importer_export_validates_clean(tmp_path):
    _write(tmp_path, [dashboard(0), dashboard(1, dead=True)], [explanation(0)])
    report = validate_export(tmp_path)
    assert report.problems == [], report.summary()
    assert report.components == ["neuronpedia-importer: gpt2-small/6-mistudio-res-16k"]


def test_recomputed_example_gets_a_new_activation_id(tmp_path):
    before = _activation_rows(tmp_path, dashboard(0))[0]["id"]
    changed = dashboard(0)
    changed.top_examples[0].source.row = 999
    assert _activation_rows(tmp_path, changed)[0]["id"] != before


def test_explanation_ids_are_the_same_as_in_the_prd_layout(tmp_path):
    record = explanation(0)
    _write(tmp_path, explanations=[record])
    (row,) = _rows(tmp_path / SOURCE / "explanations/batch-0.jsonl.gz")
    assert row["id"] == record.export_id("gpt2-small/6-mistudio-res-16k")
    assert len(row["id"]) == 25


def test_explanation_without_explainer_model_is_null_not_empty(tmp_path):
    _write(tmp_path, explanations=[explanation(0, explainer_model="", method="np_max-act")])
    (row,) = _rows(tmp_path / SOURCE / "explanations/batch-0.jsonl.gz")
    assert row["explanationModelName"] is None and row["typeName"] == "np_max-act"


def test_method_is_mapped_to_neuronpedias_type_name(tmp_path):
    _write(tmp_path, explanations=[explanation(0, method="OAI_token-act-pair")])
    (row,) = _rows(tmp_path / SOURCE / "explanations/batch-0.jsonl.gz")
    assert row["typeName"] == "oai_token-act-pair"


def test_explanations_neuronpedia_lacks_go_to_the_pending_folder(tmp_path):
    heuristic = explanation(0, "fires on ' dog'", method="mistudio_top-tokens", explainer_model="")
    unknown_model = explanation(0, "dogs", explainer_model="claude-9")
    _write(tmp_path, explanations=[explanation(0), heuristic, unknown_model])
    kept = _rows(tmp_path / SOURCE / "explanations/batch-0.jsonl.gz")
    pending = _rows(tmp_path / SOURCE / "explanations-pending/batch-0.jsonl.gz")
    assert [r["description"] for r in kept] == ["words about speed"]
    assert sorted(r["description"] for r in pending) == ["dogs", "fires on ' dog'"]
    assert validate_export(tmp_path).problems == []


def test_explanation_ids_come_from_content_not_the_store(tmp_path):
    record = explanation(0)
    other_source = naming(source_set="other-set").neuronpedia_id
    assert record.export_id("gpt2-small/6-mistudio-res-16k") != record.export_id(other_source)
    later = explanation(0, created_at="2026-01-01T00:00:00Z")
    assert later.export_id(other_source) == record.export_id(other_source)
    assert explanation(1).export_id(other_source) != record.export_id(other_source)


def test_neurons_name_their_hook_and_activations_carry_no_dfa(tmp_path):
    row = _neuron_row(tmp_path, dashboard(0))
    assert row["hookName"] == "blocks.6.hook_resid_post"
    act = _activation_rows(tmp_path, dashboard(0))[0]
    assert (act["dfaMaxValue"], act["dfaTargetIndex"], act["dfaValues"]) == (0, -1, [])


def test_quantile_example_names_its_sampled_token_not_the_window_max(tmp_path):
    d = dashboard(0)
    d.quantile_groups[0].examples[0].qualifying_token_index = 4
    rows = _activation_rows(tmp_path, d)
    assert (rows[10]["qualifyingTokenIndex"], rows[10]["maxValueTokenIndex"]) == (4, 1)


def test_model_rows_carry_the_layer_count_and_the_chosen_visibility(tmp_path):
    write_importer_export(
        tmp_path, sae_info(), naming(visibility="PUBLIC"), column_batches([dashboard(0)])
    )
    (model,) = _rows(tmp_path / SOURCE / "model.jsonl")
    assert (model["layers"], model["visibility"]) == (12, "PUBLIC")
    (source,) = _rows(tmp_path / SOURCE / "source.jsonl")
    assert source["visibility"] == "PUBLIC"


def test_unknown_model_layer_count_is_refused(tmp_path):
    with pytest.raises(InvalidArgument) as err:
        write_importer_export(
            tmp_path, sae_info(model_layers=0), naming(), column_batches([dashboard(0)])
        )
    assert err.value.field == "sae_info.model_layers"


def test_a_label_becomes_an_explanation_of_no_type_and_no_model(tmp_path):
    label = FeatureLabel(0, "dogs", "animals", "2025-02-01T00:00:00Z").as_explanation()
    _write(tmp_path, explanations=[label])
    (row,) = _rows(tmp_path / SOURCE / "explanations/batch-0.jsonl.gz")
    assert (row["description"], row["typeName"], row["explanationModelName"]) == (
        "dogs", None, None,
    )  # fmt: skip
    assert row["createdAt"] == "2025-02-01T00:00:00Z"


def test_activation_ids_are_the_stable_ids_of_each_examples_parts():
    parts = [[3, 4], ["top", "q0"], [0, 7], ["stories", ""], [12, 0], [5, 1], [20, 9]]
    expected = [jsonio.stable_id(naming().neuronpedia_id, *key) for key in zip(*parts, strict=True)]
    assert activation_ids(naming(), *parts) == expected
