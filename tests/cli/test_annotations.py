"""`run --labels` / `--explanations` files: read, checked against the SAE, and what they set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mistudio_cli.annotations import read_annotations
from mistudio_common.errors import InvalidArgument


def test_labels_csv_sets_label_and_category(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text('feature_index,label,category\n3,dogs,animals\n5,"cats, mostly",\n')
    notes = read_annotations(str(path), "")
    assert {i: (f.label, f.category) for i, f in notes.labels.items()} == {
        3: ("dogs", "animals"),
        5: ("cats, mostly", ""),
    }


def test_labels_json_sets_label_and_category(tmp_path: Path) -> None:
    path = tmp_path / "labels.json"
    path.write_text(json.dumps([{"feature_index": 2, "label": "happy", "category": "emotions"}]))
    assert read_annotations(str(path), "").labels[2].category == "emotions"


def test_explanations_file_keeps_scores_dates_and_labels(tmp_path: Path) -> None:
    path = tmp_path / "explanations.json"
    rows = [
        {"feature_index": 1, "description": "dogs", "method": "np_max-act",
         "created_at": "2025-01-15T10:30:00Z"},
        {"feature_index": 2, "description": "cats", "score": 0.5, "label": "cats",
         "category": "animals"},
    ]  # fmt: skip
    path.write_text(json.dumps(rows))
    notes = read_annotations("", str(path))
    (_, dogs), (_, cats) = notes.explanations
    assert not dogs.HasField("score") and dogs.created_at.seconds == 1_736_937_000
    assert cats.score == 0.5
    assert (notes.labels[2].label, notes.labels[2].category) == ("cats", "animals")


def test_a_bad_index_names_the_row_before_anything_is_stored(tmp_path: Path) -> None:
    path = tmp_path / "explanations.json"
    path.write_text(json.dumps([{"feature_index": 1, "description": "ok"},
                                {"feature_index": 99, "description": "too far"}]))  # fmt: skip
    notes = read_annotations("", str(path))
    with pytest.raises(InvalidArgument) as err:
        notes.check(d_sae=64)
    assert "explanations.json[1]" in err.value.message and "0..63" in err.value.message


def test_a_labels_csv_without_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("3,dogs\n")
    with pytest.raises(InvalidArgument) as err:
        read_annotations(str(path), "")
    assert err.value.field == "--labels" and "feature_index,label" in err.value.fix


def test_unknown_keys_in_an_explanation_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "explanations.json"
    path.write_text(json.dumps([{"feature_index": 1, "description": "x", "explainer": "gpt"}]))
    with pytest.raises(InvalidArgument) as err:
        read_annotations("", str(path))
    assert "explainer" in err.value.message
