"""An importer Activation file whose bytes vouch for the values is read through its outline
(msgspec, a chunk of lines at a time); a file the outline cannot vouch for gets the full checks,
and the findings are those of the full checks either way."""

import gzip
import re

import msgspec
import orjson
import pytest
from mistudio_export.formats.neuronpedia_importer import ACTIVATION_COLUMNS, NOT_NULL
from mistudio_export.formats.schemas import load_schema
from mistudio_export.validation import importer_checks, validate_export
from mistudio_export.validation.outline import (
    ActivationRow,
    PrdFeature,
    outline,
    outline_lines,
)

from tests.export.validation.files import importer_export

ACTS = "gpt2-small/6-mistudio-res-16k/activations/batch-0.jsonl.gz"
ROWS = msgspec.json.Decoder(ActivationRow)


def _edit(path, edit):
    path.write_bytes(gzip.compress(edit(gzip.decompress(path.read_bytes()))))


def _on_line_2(old, new):
    def edit(data):
        lines = data.split(b"\n")
        assert old in lines[1]
        lines[1] = lines[1].replace(old, new, 1)
        return b"\n".join(lines)

    return edit


BREAKS = {
    "an index of another type": _on_line_2(b'"index":"0"', b'"index":0'),
    "a NOT NULL value null": _on_line_2(b'"maxValue":3.25', b'"maxValue":null'),
    "NaN": _on_line_2(b'"values":[0.0', b'"values":[NaN'),
    "a number over a float": _on_line_2(b'"values":[0.0', b'"values":[1e400'),
    "invalid UTF-8": _on_line_2(b'" quick"', b'" qu\xffick"'),
    "a missing field": _on_line_2(b',"zValues":null}', b"}"),
    "an unknown field": _on_line_2(b'"zValues":null}', b'"zValues":null,"extra":1}'),
    "a private creator": _on_line_2(b'"creatorId":"clkht01d40000jv08hvalcvly"', b'"creatorId":"x"'),
    "another model": _on_line_2(b'"modelId":"gpt2-small"', b'"modelId":"gpt2"'),
    "a blank line": lambda data: data.replace(b"\n", b"\n\n", 1),
    "a truncated last line": lambda data: data[: data.rstrip(b"\n").rfind(b"\n") + 40],
}  # fmt: skip


def _findings(root, monkeypatch, *, full):
    taken = []

    def plain(checker, data):
        facts = None if full else real(checker, data)
        taken.append(facts is not None)
        return facts

    real = importer_checks._plain_activations
    with monkeypatch.context() as patch:
        patch.setattr(importer_checks, "_plain_activations", plain)
        problems = validate_export(root, columns_checked=True).problems
    return problems, taken


def test_a_clean_activation_file_is_read_through_its_outline(tmp_path, monkeypatch):
    importer_export(tmp_path)
    problems, taken = _findings(tmp_path, monkeypatch, full=False)
    assert problems == [] and taken == [True]


@pytest.mark.parametrize("name", BREAKS)
def test_a_file_the_outline_cannot_vouch_for_gets_the_full_checks(tmp_path, monkeypatch, name):
    importer_export(tmp_path)
    _edit(tmp_path / ACTS, BREAKS[name])
    problems, taken = _findings(tmp_path, monkeypatch, full=False)
    assert taken == [False]
    assert problems == _findings(tmp_path, monkeypatch, full=True)[0]


def test_an_id_used_twice_is_found_through_the_outline(tmp_path, monkeypatch):
    importer_export(tmp_path)

    def copy_first_id(data):
        lines = data.split(b"\n")
        ids = [re.search(rb'"id":"[^"]*"', line) for line in lines[:2]]
        lines[1] = lines[1].replace(ids[1][0], ids[0][0])
        return b"\n".join(lines)

    _edit(tmp_path / ACTS, copy_first_id)
    problems, taken = _findings(tmp_path, monkeypatch, full=False)
    assert taken == [True]
    assert [(p.code, p.line) for p in problems] == [("DUPLICATE_ID", 2)]
    assert problems == _findings(tmp_path, monkeypatch, full=True)[0]


def test_the_outline_has_exactly_the_writers_columns_and_refuses_a_not_null_one_null(tmp_path):
    assert set(ActivationRow.__struct_fields__) == set(ACTIVATION_COLUMNS)
    assert set(ACTIVATION_COLUMNS) <= set(load_schema("np_activation")["properties"])
    importer_export(tmp_path)
    row = orjson.loads(gzip.decompress((tmp_path / ACTS).read_bytes()).split(b"\n")[0])
    ROWS.decode(orjson.dumps(row))
    for key in NOT_NULL["Activation"]:
        with pytest.raises(msgspec.ValidationError):
            ROWS.decode(orjson.dumps({**row, key: None}))


def test_lines_read_a_chunk_at_a_time_are_the_lines_read_at_once(tmp_path):
    importer_export(tmp_path)
    data = gzip.decompress((tmp_path / ACTS).read_bytes())
    (whole,) = outline_lines(data, ROWS)
    apart = [row for rows in outline_lines(data, ROWS, chunk_bytes=1) for row in rows or [None]]
    assert whole is not None and len(whole) == data.count(b"\n")
    assert apart == whole


def test_digits_after_a_letter_in_a_string_are_no_number_to_overflow():
    feature = msgspec.json.Decoder(PrdFeature)
    assert outline(b'{"feature_index": "c5e565", "id": "x1.5e400"}', feature) is not None
    assert outline(b'{"feature_index": "c5e565", "x": [1.5e400]}', feature) is None
    assert outline(b'{"feature_index": "c5e565", "x": -1.5e400}', feature) is None
