from mistudio_export.validation import Severity, validate_export

from tests.export.validation.files import (
    edit_json,
    read_json,
    saedashboard_export,
    upload_export,
)

PAYLOAD = "upload-batch-0.json"


def _only(report):
    (problem,) = report.problems
    return problem


def test_saedashboard_str_and_values_of_different_length_are_reported(tmp_path):
    saedashboard_export(tmp_path)
    edit_json(tmp_path / "batch-0.json", lambda d: d["features"][1]["pos_str"].pop())
    problem = _only(validate_export(tmp_path))
    assert (problem.code, problem.pointer) == ("LENGTH_MISMATCH", "/features/1")


def test_saedashboard_missing_feature_key_is_reported(tmp_path):
    saedashboard_export(tmp_path)
    edit_json(tmp_path / "batch-0.json", lambda d: d["features"][0].pop("frac_nonzero"))
    problem = _only(validate_export(tmp_path))
    assert (problem.code, problem.pointer) == ("MISSING_FIELD", "/features/0/frac_nonzero")


def test_saedashboard_qualifying_index_outside_the_example_is_reported(tmp_path):
    saedashboard_export(tmp_path)
    edit_json(
        tmp_path / "batch-0.json",
        lambda d: d["features"][0]["activations"][0].__setitem__("qualifying_token_index", 6),
    )
    assert _only(validate_export(tmp_path)).code == "SCHEMA_VIOLATION"


def test_saedashboard_duplicate_feature_across_batches_is_reported(tmp_path):
    saedashboard_export(tmp_path)
    edit_json(tmp_path / "batch-0.json", lambda d: d["features"][1].__setitem__("feature_index", 0))
    assert _only(validate_export(tmp_path)).code == "DUPLICATE_FEATURE"


def test_upload_with_too_many_logits_is_over_the_limit_and_trimmed(tmp_path):
    upload_export(tmp_path)
    edit_json(
        tmp_path / PAYLOAD,
        lambda d: d["features"][0].__setitem__("topLogits", d["features"][0]["topLogits"] * 13),
    )
    problem = _only(validate_export(tmp_path))
    assert (problem.code, problem.pointer, problem.fixable) == (
        "LIMIT_EXCEEDED",
        "/features/0/topLogits",
        True,
    )
    validate_export(tmp_path, fix=True)
    assert len(read_json(tmp_path / PAYLOAD)["features"][0]["topLogits"]) == 20
    assert validate_export(tmp_path).problems == []


def test_upload_example_over_1024_tokens_is_cut_around_its_max(tmp_path):
    upload_export(tmp_path)

    def lengthen(d):
        a = d["features"][0]["activations"][0]
        a["tokens"], a["values"] = ["t"] * 1100, [0.0] * 1100
        a["values"][1050] = 5.0

    edit_json(tmp_path / PAYLOAD, lengthen)
    problem = _only(validate_export(tmp_path))
    assert (problem.code, problem.pointer) == ("LIMIT_EXCEEDED", "/features/0/activations/0/tokens")
    validate_export(tmp_path, fix=True)
    a = read_json(tmp_path / PAYLOAD)["features"][0]["activations"][0]
    assert len(a["values"]) == 1024 and max(a["values"]) == 5.0


def test_upload_explanation_over_512_characters_is_cut(tmp_path):
    upload_export(tmp_path)
    edit_json(
        tmp_path / PAYLOAD,
        lambda d: d["features"][0]["explanations"][0].__setitem__("text", "y" * 700),
    )
    assert _only(validate_export(tmp_path)).code == "LIMIT_EXCEEDED"
    validate_export(tmp_path, fix=True)
    assert len(read_json(tmp_path / PAYLOAD)["features"][0]["explanations"][0]["text"]) == 512


def test_upload_body_over_128_features_cannot_be_fixed_in_place(tmp_path):
    upload_export(tmp_path)

    def grow(d):
        d["features"] = [dict(d["features"][0], index=i) for i in range(129)]

    edit_json(tmp_path / PAYLOAD, grow)
    problem = _only(validate_export(tmp_path))
    assert (problem.code, problem.pointer, problem.fixable) == (
        "LIMIT_EXCEEDED",
        "/features",
        False,
    )


def test_upload_density_outside_zero_one_is_a_limit_problem(tmp_path):
    upload_export(tmp_path)
    edit_json(tmp_path / PAYLOAD, lambda d: d["features"][0].__setitem__("density", 1.5))
    assert _only(validate_export(tmp_path)).severity is Severity.ERROR


def test_upload_file_listed_in_the_manifest_but_missing_is_reported(tmp_path):
    upload_export(tmp_path)
    (tmp_path / PAYLOAD).unlink()
    problem = _only(validate_export(tmp_path))
    assert (problem.code, problem.file) == ("MISSING_FILE", PAYLOAD)
