import gzip
import shutil

from mistudio_export.validation import Severity, validate_export
from mistudio_export.validation.report import PROBLEM_CLASSES

from tests.export.validation.files import edit_rows, importer_export, read_rows

ACTS = "gpt2-small/6-mistudio-res-16k/activations/batch-0.jsonl.gz"
FEATS = "gpt2-small/6-mistudio-res-16k/features/batch-0.jsonl.gz"
EXPLS = "gpt2-small/6-mistudio-res-16k/explanations/batch-0.jsonl.gz"


def _only(report):
    (problem,) = report.problems
    return problem


def test_line_missing_a_key_breaks_the_key_set_and_gets_the_default(tmp_path):
    importer_export(tmp_path)
    edit_rows(tmp_path / FEATS, lambda rows: rows[1].pop("decoder_weights_dist"))
    problem = _only(validate_export(tmp_path))
    assert (problem.code, problem.file, problem.line, problem.pointer) == (
        "KEY_SET_MISMATCH",
        FEATS,
        2,
        "/decoder_weights_dist",
    )
    report = validate_export(tmp_path, fix=True)
    assert [c.description for c in report.changes] == ["added decoder_weights_dist=[]"]
    assert read_rows(tmp_path / FEATS)[1]["decoder_weights_dist"] == []
    assert validate_export(tmp_path).problems == []


def test_extra_key_on_a_later_line_is_dropped_by_the_importer(tmp_path):
    importer_export(tmp_path)
    edit_rows(tmp_path / ACTS, lambda rows: rows[3].__setitem__("dfaValues2", []))
    codes = {(p.code, p.severity) for p in validate_export(tmp_path).problems}
    assert ("KEY_SET_MISMATCH", Severity.WARNING) in codes


def test_null_not_null_column_is_reported(tmp_path):
    importer_export(tmp_path)
    edit_rows(tmp_path / ACTS, lambda rows: rows[0].__setitem__("creatorId", None))
    problems = [p for p in validate_export(tmp_path).problems if p.code == "NOT_NULL_MISSING"]
    assert [(p.line, p.pointer, p.fixable) for p in problems] == [(1, "/creatorId", False)]


def test_missing_max_value_is_computed_from_values(tmp_path):
    importer_export(tmp_path)
    edit_rows(tmp_path / ACTS, lambda rows: rows[4].pop("maxValue"))
    problem = _only(validate_export(tmp_path))
    assert (problem.code, problem.line, problem.fixable) == ("NOT_NULL_MISSING", 5, True)
    validate_export(tmp_path, fix=True)
    assert read_rows(tmp_path / ACTS)[4]["maxValue"] == 2.5
    assert validate_export(tmp_path).problems == []


def test_wrong_max_value_is_recomputed(tmp_path):
    importer_export(tmp_path)
    edit_rows(tmp_path / ACTS, lambda rows: rows[0].__setitem__("minValue", 1.0))
    assert _only(validate_export(tmp_path)).code == "MIN_VALUE_MISMATCH"
    validate_export(tmp_path, fix=True)
    assert read_rows(tmp_path / ACTS)[0]["minValue"] == 0.0


def test_misspelt_column_is_a_warning_once_per_file(tmp_path):
    importer_export(tmp_path)
    edit_rows(tmp_path / ACTS, lambda rows: [r.update(maxvalue=1.0) for r in rows])
    problem = _only(validate_export(tmp_path))
    assert (problem.code, problem.severity, problem.pointer) == (
        "UNKNOWN_COLUMN",
        Severity.WARNING,
        "/maxvalue",
    )


def test_row_of_another_source_is_an_identity_mismatch(tmp_path):
    importer_export(tmp_path)
    edit_rows(tmp_path / FEATS, lambda rows: rows[0].__setitem__("layer", "7-mistudio-res-16k"))
    assert "IDENTITY_MISMATCH" in validate_export(tmp_path).codes()


def test_activation_without_its_neuron_row_is_an_orphan(tmp_path):
    importer_export(tmp_path)
    edit_rows(tmp_path / FEATS, lambda rows: rows.pop(1))
    problem = _only(validate_export(tmp_path))
    assert (problem.code, problem.file, problem.line) == ("ORPHAN_ROW", ACTS, 14)


def test_duplicate_activation_id_is_reported(tmp_path):
    importer_export(tmp_path)
    edit_rows(tmp_path / ACTS, lambda rows: rows[1].__setitem__("id", rows[0]["id"]))
    problem = _only(validate_export(tmp_path))
    assert (problem.code, problem.line) == ("DUPLICATE_ID", 2)


def test_activation_id_used_in_an_earlier_file_is_reported(tmp_path):
    importer_export(tmp_path)
    later = ACTS.replace("batch-0", "batch-1")
    shutil.copy(tmp_path / ACTS, tmp_path / later)
    edit_rows(tmp_path / later, lambda rows: rows.__delitem__(slice(1, None)))  # batch-0's first
    problem = _only(validate_export(tmp_path))
    assert (problem.code, problem.file, problem.line) == ("DUPLICATE_ID", later, 1)


def test_max_act_approx_is_checked_against_the_activations(tmp_path):
    importer_export(tmp_path)
    edit_rows(tmp_path / FEATS, lambda rows: rows[0].__setitem__("maxActApprox", 1.0))
    problem = _only(validate_export(tmp_path))
    assert (problem.code, problem.pointer) == ("MAX_VALUE_MISMATCH", "/maxActApprox")
    validate_export(tmp_path, fix=True)
    assert read_rows(tmp_path / FEATS)[0]["maxActApprox"] == 3.5


def test_private_creator_hides_the_activations(tmp_path):
    importer_export(tmp_path)
    edit_rows(tmp_path / ACTS, lambda rows: [r.update(creatorId="someone") for r in rows])
    problem = _only(validate_export(tmp_path))
    assert (problem.code, problem.severity) == ("HIDDEN_ACTIVATIONS", Severity.WARNING)


def test_unknown_explanation_type_is_an_error(tmp_path):
    importer_export(tmp_path)
    edit_rows(tmp_path / EXPLS, lambda rows: rows[0].__setitem__("typeName", "miStudio_llm"))
    problem = _only(validate_export(tmp_path))
    assert (problem.code, problem.severity) == ("UNKNOWN_EXPLANATION_TYPE", Severity.ERROR)
    assert "explanations-pending" in PROBLEM_CLASSES[problem.code].fix


def test_unknown_explainer_model_is_an_error(tmp_path):
    importer_export(tmp_path)
    edit_rows(tmp_path / EXPLS, lambda rows: rows[0].__setitem__("explanationModelName", "x-1"))
    problem = _only(validate_export(tmp_path))
    assert (problem.code, problem.pointer) == ("UNKNOWN_EXPLANATION_TYPE", "/explanationModelName")


def test_empty_explainer_model_name_is_an_error_repaired_to_null(tmp_path):
    importer_export(tmp_path)
    edit_rows(tmp_path / EXPLS, lambda rows: rows[0].__setitem__("explanationModelName", ""))
    problem = _only(validate_export(tmp_path))
    assert (problem.code, problem.severity, problem.fixable) == (
        "EMPTY_MODEL_NAME", Severity.ERROR, True,
    )  # fmt: skip
    validate_export(tmp_path, fix=True)
    assert read_rows(tmp_path / EXPLS)[0]["explanationModelName"] is None


def test_histogram_centres_out_of_order_are_reported(tmp_path):
    importer_export(tmp_path)
    edit_rows(tmp_path / FEATS, lambda rows: rows[0]["freq_hist_data_bar_values"].reverse())
    problem = _only(validate_export(tmp_path))
    assert (problem.code, problem.pointer) == ("HISTOGRAM_EDGES", "/freq_hist_data_bar_values/1")


def test_source_folder_that_is_not_a_source_id_breaks_naming(tmp_path):
    source = importer_export(tmp_path)
    source.rename(source.parent / "mistudio")
    report = validate_export(tmp_path)
    naming = [p for p in report.problems if p.code == "NAMING"]
    assert naming and naming[0].severity is Severity.ERROR
    assert "IDENTITY_MISMATCH" in report.codes()


def test_corrupt_gzip_batch_is_unreadable(tmp_path):
    importer_export(tmp_path)
    (tmp_path / ACTS).write_bytes(b"\x1f\x8b\x08\x00garbage")
    problem = _only(validate_export(tmp_path))
    assert (problem.code, problem.file) == ("FILE_UNREADABLE", ACTS)


def test_missing_model_row_file_is_reported(tmp_path):
    source = importer_export(tmp_path)
    (source / "model.jsonl").unlink()
    problem = _only(validate_export(tmp_path))
    assert (problem.code, problem.file) == (
        "MISSING_FILE",
        "gpt2-small/6-mistudio-res-16k/model.jsonl",
    )


def test_unknown_field_in_a_metadata_row_is_an_error(tmp_path):
    source = importer_export(tmp_path)
    edit_rows(source / "source.jsonl", lambda rows: rows[0].__setitem__("inferenceHosts", []))
    problem = _only(validate_export(tmp_path))
    assert (problem.code, problem.severity) == ("UNKNOWN_COLUMN", Severity.ERROR)


def test_unparseable_line_is_kept_when_other_lines_are_repaired(tmp_path):
    importer_export(tmp_path)
    path = tmp_path / ACTS

    def break_rows(rows):
        rows[0]["minValue"] = 1.0

    edit_rows(path, break_rows)
    text = gzip.decompress(path.read_bytes()).decode().splitlines()
    text[2] = '{"id": "broken'
    path.write_bytes(gzip.compress(("\n".join(text) + "\n").encode()))
    report = validate_export(tmp_path, fix=True)
    assert [c.code for c in report.changes] == ["MIN_VALUE_MISMATCH"]
    assert "INVALID_JSON" in report.codes()
    assert gzip.decompress(path.read_bytes()).decode().splitlines()[2] == '{"id": "broken'


def test_quantile_row_naming_a_token_outside_its_bin_is_reported(tmp_path):
    importer_export(tmp_path)
    # row 11 is the first quantile example (bin 1.0..2.0); token 0 has 0.0
    edit_rows(tmp_path / ACTS, lambda rows: rows[10].__setitem__("qualifyingTokenIndex", 0))
    problem = _only(validate_export(tmp_path))
    assert (problem.code, problem.severity, problem.line) == ("INCONSISTENT", Severity.WARNING, 11)
    assert "outside its bin" in problem.message
