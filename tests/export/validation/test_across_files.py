"""Checks that span files, whose per-feature memory the validators keep in columns (``seen``)."""

import json
import shutil

from mistudio_export.validation import validate_export
from mistudio_export.validation.seen import FirstSeen, Maxima

from tests.export.validation.files import (
    edit_json,
    edit_rows,
    importer_export,
    prd_export,
    saedashboard_export,
    upload_export,
)

SOURCE = "gpt2-small/6-mistudio-res-16k"
ACTS, FEATS = f"{SOURCE}/activations/batch-0.jsonl.gz", f"{SOURCE}/features/batch-0.jsonl.gz"


def _found(report):
    return [(p.code, p.file, p.line, p.message) for p in report.problems]


def test_saedashboard_feature_in_a_later_batch_file_names_the_first(tmp_path):
    saedashboard_export(tmp_path)
    shutil.copy(tmp_path / "batch-0.json", tmp_path / "batch-1.json")
    found = _found(validate_export(tmp_path))
    assert found == [
        ("DUPLICATE_FEATURE", "batch-1.json", None, f"feature {i} also in batch-0.json")
        for i in (0, 1)
    ]


def test_upload_feature_in_a_later_payload_names_the_first(tmp_path):
    upload_export(tmp_path)
    shutil.copy(tmp_path / "upload-batch-0.json", tmp_path / "upload-batch-1.json")
    edit_json(tmp_path / "manifest.json", lambda d: d["files"].append("upload-batch-1.json"))
    found = _found(validate_export(tmp_path))
    assert found == [
        (
            "DUPLICATE_FEATURE",
            "upload-batch-1.json",
            None,
            f"feature {i} also in upload-batch-0.json",
        )
        for i in (0, 1)
    ]


def test_prd_feature_with_several_files_is_reported_once_per_extra_file(tmp_path):
    prd_export(tmp_path)
    features = tmp_path / "features"
    shutil.copy(features / "0.json", features / "00.json")
    shutil.copy(features / "1.json", features / "1.json.gz")
    (features / "notes.txt").write_text("hand-written")
    found = _found(validate_export(tmp_path))
    assert found == [
        ("UNEXPECTED_FILE", "features/notes.txt", None, found[0][3]),
        ("DUPLICATE_FEATURE", "features/00.json", None, "feature 0 also in 0.json"),
        ("DUPLICATE_FEATURE", "features/1.json.gz", None, "feature 1 also in 1.json"),
    ]


def test_prd_count_counts_features_not_files(tmp_path):
    prd_export(tmp_path)
    (tmp_path / "features/1.json").unlink()
    shutil.copy(tmp_path / "features/0.json", tmp_path / "features/0.json.gz")
    codes = [p.code for p in validate_export(tmp_path).problems]
    assert codes == ["DUPLICATE_FEATURE", "COUNT_MISMATCH"]


def test_explanation_of_a_feature_without_a_file_is_an_orphan(tmp_path):
    prd_export(tmp_path)
    path = tmp_path / "explanations/explanations.json"
    edit_json(path, lambda d: d["features"].append({**d["features"][0], "feature_index": 7}))
    found = _found(validate_export(tmp_path))
    assert [(code, file) for code, file, _, _ in found] == [
        ("ORPHAN_ROW", "explanations/explanations.json")
    ]


def test_neuron_row_in_a_later_features_file_is_a_duplicate(tmp_path):
    source = importer_export(tmp_path)
    later = FEATS.replace("batch-0", "batch-1")
    shutil.copy(tmp_path / FEATS, tmp_path / later)
    edit_rows(tmp_path / later, lambda rows: rows.__delitem__(0))  # feature 1's row again
    assert source.is_dir()
    found = _found(validate_export(tmp_path))
    assert found == [("DUPLICATE_FEATURE", later, 1, "feature 1 has another Neuron row")]


def test_index_with_a_leading_zero_is_another_feature_for_the_importer(tmp_path):
    importer_export(tmp_path)
    edit_rows(tmp_path / ACTS, lambda rows: rows[13].__setitem__("index", "01"))
    found = _found(validate_export(tmp_path))  # and feature 1's strongest row is gone
    assert ("ORPHAN_ROW", ACTS, 14, "feature 01 has no row in features/") in found


def test_activation_maximum_in_a_later_file_counts_for_max_act_approx(tmp_path):
    importer_export(tmp_path)
    later = ACTS.replace("batch-0", "batch-1")
    shutil.copy(tmp_path / ACTS, tmp_path / later)

    def stronger(rows):
        (row,) = rows[:1]
        row.update(
            id="c" + "x" * 24,
            values=[2 * v for v in row["values"]],
            maxValue=2 * row["maxValue"],
            minValue=2 * row["minValue"],
        )
        rows[:] = [row]

    edit_rows(tmp_path / later, stronger)
    found = _found(validate_export(tmp_path))
    assert found == [
        ("MAX_VALUE_MISMATCH", FEATS, 1, "maxActApprox=3.5 but its activations reach 7.0")
    ]


def test_first_seen_keeps_the_first_place_across_files_and_odd_keys_apart():
    seen = FirstSeen()
    seen.add(5, "a", 1)
    seen.add(2**70, "a", 2)
    seen.add("07", "a", 3)
    seen.add(5, "a", 4)
    seen.end_file()
    seen.add(5, "b", 1)
    seen.add(-3, "b", 2)
    assert (seen.where(5), seen.where(2**70), seen.where("07"), seen.where(-3)) == (
        ("a", 1),
        ("a", 2),
        ("a", 3),
        ("b", 2),
    )
    assert seen.where(7) is None and 7 not in seen and len(seen) == 4
    other = FirstSeen()
    other.add(5, "c")
    assert sorted(map(str, seen.missing_from(other))) == sorted(
        map(str, [(-3, "b", 2), (2**70, "a", 2), ("07", "a", 3)])
    )


def test_maxima_merge_the_files_values():
    maxima = Maxima()
    maxima.update(1, 2.0)
    maxima.update(1, 1.0)
    maxima.update(3, 5)  # an integer is kept exactly
    maxima.end_file()
    maxima.update(1, 4.0)
    assert (maxima.get(1), maxima.get(3), maxima.get(2)) == (4.0, 5, None)
    maxima.end_file()
    maxima.update(1, 3.0)
    maxima.end_file()
    assert maxima.get(1) == 4.0
    assert json.dumps(maxima.get(3)) == "5"
