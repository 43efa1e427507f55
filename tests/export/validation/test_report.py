import json

import pytest
from mistudio_common.errors import NotFound
from mistudio_export.validation import PROBLEM_CLASSES, Severity, validate_export
from mistudio_export.validation.__main__ import main

from tests.export.validation.files import (
    edit_json,
    importer_export,
    prd_export,
    saedashboard_export,
    upload_export,
)


def _broken(tmp_path):
    root = prd_export(tmp_path)
    edit_json(root / "features/0.json", lambda d: d["activations"][0].__setitem__("max_value", 1.0))
    edit_json(root / "features/1.json", lambda d: d["activations"][0].__setitem__("max_value", 1.0))
    edit_json(
        root / "features/1.json",
        lambda d: d["logits"]["top_positive"][0].__setitem__("token", "\x01"),
    )
    return root


def test_every_format_together_validates_clean(tmp_path):
    prd_export(tmp_path / "prd")
    importer_export(tmp_path / "neuronpedia")
    saedashboard_export(tmp_path / "saedashboard")
    upload_export(tmp_path / "upload")
    report = validate_export(tmp_path)
    assert report.ok and report.problems == []
    assert [c.split(":")[0] for c in report.components] == [
        "neuronpedia-importer",
        "prd",
        "saedashboard",
        "upload-payloads",
    ]
    assert report.files_checked == sum(p.is_file() for p in tmp_path.rglob("*")) == 14


def test_archive_root_packaging_files_are_recognised_not_taken_for_upload_payloads(tmp_path):
    from mistudio_export.packaging import PREFILL_NAME, README_NAME, build_archive

    folder = tmp_path / "export"
    prd_export(folder / "prd")
    upload_export(folder / "upload-payloads")
    (folder / README_NAME).write_text("# export\n")
    (folder / PREFILL_NAME).write_text("{}\n")
    build_archive(folder, tmp_path / "export.zip")  # writes the manifest into the folder
    report = validate_export(folder)
    assert report.ok and report.problems == []
    assert report.components == ["packaging: .", "prd: prd", "upload-payloads: upload-payloads"]


def test_packaging_manifest_listing_a_missing_file_is_reported(tmp_path):
    from mistudio_export.packaging import build_archive

    folder = tmp_path / "export"
    prd_export(folder / "prd")
    build_archive(folder, tmp_path / "export.zip")  # writes the manifest into the folder
    (folder / "prd" / "features" / "1.json").unlink()
    problems = [(p.code, p.file) for p in validate_export(folder).problems]
    assert ("MISSING_FILE", "manifest.json") in problems


def test_report_json_lists_problems_with_severity_code_file_and_pointer(tmp_path):
    data = json.loads(validate_export(_broken(tmp_path)).to_json())
    assert data["ok"] is False
    assert data["counts"] == {"error": 2, "warning": 1, "info": 0}
    first = data["problems"][0]
    assert set(first) == {"severity", "code", "file", "pointer", "message", "line", "fixable"}
    assert (first["severity"], first["code"], first["pointer"]) == (
        "error",
        "MAX_VALUE_MISMATCH",
        "/activations/0/max_value",
    )


def test_summary_groups_problems_by_class_with_a_fix(tmp_path):
    summary = validate_export(_broken(tmp_path)).summary()
    assert summary.startswith("FAILED")
    assert summary.count("MAX_VALUE_MISMATCH:") == 1
    assert "2 in 2 file(s); fix: " + PROBLEM_CLASSES["MAX_VALUE_MISMATCH"].fix in summary
    assert summary.index("[error]") < summary.index("[warning]")


def test_fix_report_lists_changes_and_only_what_is_left(tmp_path):
    report = validate_export(_broken(tmp_path), fix=True)
    assert sorted(c.code for c in report.changes) == [
        "MAX_VALUE_MISMATCH",
        "MAX_VALUE_MISMATCH",
        "TOKEN_ENCODING",
    ]
    assert report.problems == [] and "auto-fix made 3 changes" in report.summary()


def test_warnings_alone_keep_the_report_ok(tmp_path):
    root = prd_export(tmp_path)
    edit_json(
        root / "features/0.json", lambda d: d["activations"][0]["tokens"].__setitem__(0, "\ufffd")
    )
    report = validate_export(root)
    assert report.ok and report.count(Severity.WARNING) == 1


def test_empty_folder_reports_nothing_found(tmp_path):
    report = validate_export(tmp_path)
    assert report.codes() == {"NOTHING_FOUND"} and report.ok


def test_missing_folder_is_not_found(tmp_path):
    with pytest.raises(NotFound):
        validate_export(tmp_path / "absent")


def test_command_exit_status_says_whether_errors_remain(tmp_path, capsys):
    root = _broken(tmp_path)
    assert main([str(root)]) == 1
    assert "MAX_VALUE_MISMATCH" in capsys.readouterr().out
    assert main([str(root), "--fix", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True
