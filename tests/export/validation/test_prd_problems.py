import gzip
import math

import orjson
import pytest
from mistudio_export.validation import Severity, validate_export

from tests.export.validation.files import edit_json, prd_export, read_json, replace_bytes

FEATURE = "features/0.json"


def _problems(report, code):
    return [p for p in report.problems if p.code == code]


def test_nan_is_reported_with_file_and_pointer(tmp_path):
    root = prd_export(tmp_path)
    edit_json(root / FEATURE, lambda d: d["activations"][0]["values"].__setitem__(1, math.nan))
    assert b"NaN" in (root / FEATURE).read_bytes()
    (problem,) = _problems(validate_export(root), "NON_FINITE")
    assert (problem.file, problem.pointer) == (FEATURE, "/activations/0/values/1")
    assert problem.severity is Severity.ERROR and problem.fixable


def test_fix_replaces_nan_with_zero_and_lists_the_change(tmp_path):
    root = prd_export(tmp_path)
    edit_json(root / FEATURE, lambda d: d["statistics"].__setitem__("std_activation", math.inf))
    report = validate_export(root, fix=True)
    assert [(c.code, c.pointer) for c in report.changes] == [
        ("NON_FINITE", "/statistics/std_activation")
    ]
    assert read_json(root / FEATURE)["statistics"]["std_activation"] == 0.0
    assert validate_export(root).problems == []


def test_wrong_type_is_reported(tmp_path):
    root = prd_export(tmp_path)
    edit_json(root / FEATURE, lambda d: d["activations"][0].__setitem__("max_value", "3.5"))
    (problem,) = _problems(validate_export(root), "WRONG_TYPE")
    assert problem.pointer == "/activations/0/max_value"
    assert "expected number, found string" in problem.message


def test_missing_field_is_reported(tmp_path):
    root = prd_export(tmp_path)
    edit_json(root / FEATURE, lambda d: d.pop("statistics"))
    edit_json(root / "features/1.json", lambda d: d["activations"][2].pop("values"))
    pointers = {(p.file, p.pointer) for p in _problems(validate_export(root), "MISSING_FIELD")}
    assert pointers == {(FEATURE, "/statistics"), ("features/1.json", "/activations/2/values")}


def test_mismatched_max_value_is_reported_and_recomputed(tmp_path):
    root = prd_export(tmp_path)
    edit_json(root / FEATURE, lambda d: d["activations"][1].__setitem__("max_value", 9.0))
    (problem,) = validate_export(root).problems
    assert (problem.code, problem.pointer) == ("MAX_VALUE_MISMATCH", "/activations/1/max_value")
    report = validate_export(root, fix=True)
    assert [c.code for c in report.changes] == ["MAX_VALUE_MISMATCH"]
    assert read_json(root / FEATURE)["activations"][1]["max_value"] == 3.25
    assert validate_export(root).problems == []


def test_wrong_max_token_index_is_pointed_at_the_maximum(tmp_path):
    root = prd_export(tmp_path)
    edit_json(root / FEATURE, lambda d: d["activations"][0].__setitem__("max_token_index", 5))
    (problem,) = validate_export(root).problems
    assert problem.code == "MAX_INDEX_MISMATCH"
    validate_export(root, fix=True)
    assert read_json(root / FEATURE)["activations"][0]["max_token_index"] == 2


def test_feature_index_that_differs_from_the_file_name_is_reported(tmp_path):
    root = prd_export(tmp_path)
    (root / "features/1.json").rename(root / "features/5.json")
    (problem,) = validate_export(root).problems
    assert (problem.code, problem.file) == ("INDEX_FILE_MISMATCH", "features/5.json")
    assert "feature_index=1" in problem.message


def test_truncated_gzip_is_unreadable(tmp_path):
    root = prd_export(tmp_path, compress=True)
    path = root / "features/0.json.gz"
    path.write_bytes(path.read_bytes()[:40])
    (problem,) = _problems(validate_export(root), "FILE_UNREADABLE")
    assert problem.file == "features/0.json.gz"


def test_file_that_is_not_gzip_at_all_is_unreadable(tmp_path):
    root = prd_export(tmp_path, compress=True)
    (root / "features/1.json.gz").write_bytes(b'{"feature_index": 1}')
    assert _problems(validate_export(root), "FILE_UNREADABLE")


def test_problems_inside_gzip_files_are_found_and_fixed(tmp_path):
    root = prd_export(tmp_path, compress=True)
    path = root / "features/1.json.gz"
    edit_json(path, lambda d: d["activations"][0]["values"].__setitem__(0, -math.inf))
    assert _problems(validate_export(root), "NON_FINITE")
    validate_export(root, fix=True)
    assert gzip.decompress(path.read_bytes())
    assert validate_export(root).problems == []


def test_broken_utf8_is_reported_and_decoded_with_replacement_characters(tmp_path):
    root = prd_export(tmp_path)
    replace_bytes(root / FEATURE, b'" quick"', b'" qu\xffck"')
    report = validate_export(root)
    (problem,) = _problems(report, "INVALID_UTF8")
    assert problem.severity is Severity.ERROR and problem.fixable
    assert report.codes() == {"INVALID_UTF8", "TOKEN_ENCODING"}
    validate_export(root, fix=True)
    assert " qu\ufffdck" in read_json(root / FEATURE)["activations"][0]["tokens"]
    remaining = validate_export(root)
    assert remaining.ok and remaining.codes() == {"TOKEN_ENCODING"}


def test_invalid_json_is_reported_with_its_position(tmp_path):
    root = prd_export(tmp_path)
    path = root / FEATURE
    path.write_bytes(path.read_bytes()[:-10])
    (problem,) = validate_export(root).problems
    assert problem.code == "INVALID_JSON" and "column" in problem.message


def test_lone_surrogate_in_a_token_is_an_error_and_is_replaced(tmp_path):
    root = prd_export(tmp_path)
    edit_json(root / FEATURE, lambda d: d["activations"][0]["tokens"].__setitem__(1, "\ud83d"))
    (problem,) = validate_export(root).problems
    assert (problem.code, problem.severity) == ("TOKEN_ENCODING", Severity.ERROR)
    assert problem.pointer == "/activations/0/tokens/1"
    validate_export(root, fix=True)
    assert read_json(root / FEATURE)["activations"][0]["tokens"][1] == "\ufffd"


def test_control_character_in_a_token_is_shown_as_its_byte(tmp_path):
    root = prd_export(tmp_path)
    edit_json(
        root / FEATURE, lambda d: d["logits"]["top_positive"][0].__setitem__("token", "a\x07")
    )
    (problem,) = validate_export(root).problems
    assert (problem.code, problem.severity) == ("TOKEN_ENCODING", Severity.WARNING)
    validate_export(root, fix=True)
    assert read_json(root / FEATURE)["logits"]["top_positive"][0]["token"] == "a<0x07>"


@pytest.mark.parametrize("token", ["a\x08", "a\x0c", "a\x00", "a\x7f", "a\x9f", "a\ufffd"])
def test_suspect_characters_are_found_however_the_writer_wrote_them(tmp_path, token):
    root = prd_export(tmp_path)
    doc = read_json(root / FEATURE)
    doc["activations"][0]["tokens"][1] = token
    (root / FEATURE).write_bytes(orjson.dumps(doc))  # raw UTF-8, \b \f and \u0000 escapes
    (problem,) = validate_export(root).problems
    assert (problem.code, problem.pointer) == ("TOKEN_ENCODING", "/activations/0/tokens/1")


def test_newline_and_tab_tokens_are_fine(tmp_path):
    root = prd_export(tmp_path)
    edit_json(root / FEATURE, lambda d: d["activations"][0]["tokens"].__setitem__(0, "\n\t"))
    assert validate_export(root).problems == []


def test_histogram_total_is_recomputed_from_the_counts(tmp_path):
    root = prd_export(tmp_path)
    edit_json(root / FEATURE, lambda d: d["histogram"].__setitem__("nonzero_count", 99))
    codes = [(p.code, p.severity) for p in validate_export(root).problems]
    assert ("HISTOGRAM_TOTAL_MISMATCH", Severity.ERROR) in codes
    validate_export(root, fix=True)
    assert read_json(root / FEATURE)["histogram"]["nonzero_count"] == 11
    assert validate_export(root).problems == []


def test_decreasing_bin_edges_are_reported(tmp_path):
    root = prd_export(tmp_path)
    edit_json(root / FEATURE, lambda d: d["histogram"]["bin_edges"].__setitem__(2, 0.2))
    (problem,) = validate_export(root).problems
    assert (problem.code, problem.pointer) == ("HISTOGRAM_EDGES", "/histogram/bin_edges/2")


def test_wrong_number_of_edges_is_reported(tmp_path):
    root = prd_export(tmp_path)
    edit_json(root / FEATURE, lambda d: d["histogram"]["bin_edges"].pop())
    assert "HISTOGRAM_EDGES" in validate_export(root).codes()


def test_examples_above_max_activation_raise_it(tmp_path):
    root = prd_export(tmp_path)
    edit_json(root / FEATURE, lambda d: d["statistics"].__setitem__("max_activation", 2.0))
    (problem,) = validate_export(root).problems
    assert problem.code == "STATS_MAX_MISMATCH" and problem.severity is Severity.ERROR
    validate_export(root, fix=True)
    assert read_json(root / FEATURE)["statistics"]["max_activation"] == 3.5


def test_top_example_below_max_activation_is_a_warning(tmp_path):
    root = prd_export(tmp_path)
    edit_json(root / FEATURE, lambda d: d["statistics"].__setitem__("max_activation", 7.0))
    (problem,) = validate_export(root).problems
    assert (problem.code, problem.severity) == ("STATS_MAX_MISMATCH", Severity.WARNING)


def test_live_feature_without_examples_is_an_empty_array_error(tmp_path):
    root = prd_export(tmp_path)
    edit_json(root / FEATURE, lambda d: d.__setitem__("activations", []))
    assert ("EMPTY_ARRAY", "/activations") in {
        (p.code, p.pointer) for p in validate_export(root).problems
    }


def test_tokens_and_values_of_different_length_are_reported(tmp_path):
    root = prd_export(tmp_path)
    edit_json(root / FEATURE, lambda d: d["activations"][0]["tokens"].pop())
    (problem,) = validate_export(root).problems
    assert (problem.code, problem.pointer) == ("LENGTH_MISMATCH", "/activations/0")


def test_missing_feature_file_is_a_count_mismatch(tmp_path):
    root = prd_export(tmp_path)
    (root / "features/1.json").unlink()
    (problem,) = validate_export(root).problems
    assert (problem.code, problem.file, problem.pointer) == (
        "COUNT_MISMATCH",
        "metadata.json",
        "/n_features",
    )


def test_missing_metadata_is_reported(tmp_path):
    root = prd_export(tmp_path)
    (root / "metadata.json").unlink()
    (problem,) = validate_export(root).problems
    assert (problem.code, problem.file) == ("MISSING_FILE", "metadata.json")


def test_bad_neuronpedia_id_breaks_naming_rules(tmp_path):
    root = prd_export(tmp_path)
    edit_json(root / "metadata.json", lambda d: d.__setitem__("neuronpedia_id", "gpt2-small/res"))
    assert "NAMING" in validate_export(root).codes()


def _set_window(group, values):
    def mutate(d):
        ex = d["quantile_groups"][group]["examples"][0]
        ex["values"] = values
        ex["max_value"], ex["max_token_index"] = max(values), values.index(max(values))

    return mutate


def test_quantile_example_whose_window_peaks_above_its_bin_is_fine(tmp_path):
    root = prd_export(tmp_path)  # group 1 is [0, 1]: the sampled 0.5 is in it, the peak 1.75 not
    edit_json(root / FEATURE, _set_window(1, [0.0, 0.25, 0.1, 1.75, 0.5, 0.0]))
    assert validate_export(root).problems == []


def test_quantile_example_with_no_value_in_its_bin_is_inconsistent(tmp_path):
    root = prd_export(tmp_path)  # group 0 is [1, 2]
    edit_json(root / FEATURE, _set_window(0, [0.0, 0.25, 0.1, 0.5, 0.125, 0.0]))
    (problem,) = validate_export(root).problems
    assert (problem.code, problem.pointer) == ("INCONSISTENT", "/quantile_groups/0/examples/0")
