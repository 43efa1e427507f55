import gzip

import pytest
from mistudio_export.limits import MAX_JSON_DEPTH
from mistudio_export.validation import context, validate_export
from mistudio_export.validation.context import (
    _SUSPECT_ESCAPE,
    SUSPECT,
    _depth_within,
    suspect_bytes,
)

from tests.export.validation.files import importer_export, prd_export


def test_the_byte_search_finds_exactly_the_characters_the_text_search_finds():
    for code in range(0x110000):
        if 0xD800 <= code <= 0xDFFF:
            continue  # no valid UTF-8 holds a lone surrogate: the text path reads such files
        char = chr(code)
        found = suspect_bytes(char.encode())
        assert found == (SUSPECT.search(char) is not None), hex(code)


def test_the_byte_search_finds_the_escapes_the_text_search_finds():
    for text in ('"\\u0007"', '"a\\bc"', '"\\f"', '"\\n\\t\\""', '"\\\\"'):
        found = suspect_bytes(text.encode())
        assert found == (_SUSPECT_ESCAPE.search(text) is not None), text


@pytest.mark.parametrize("steps", [1, 3, 100_000])
@pytest.mark.parametrize(
    "text",
    [
        '"\\\\\\n\\t\\u0007"',
        '"\\\\\\\\\\f"',
        '"\\n\\t\\\\"',
        "\u00e9\u00a0\u0085",
        "\u00e9\u00a0\u00c2",
    ],
)
def test_the_byte_search_reads_on_past_its_steps_and_finds_the_same(monkeypatch, steps, text):
    """Past ``_LEAD_STEPS`` lead bytes the regex searches the rest: same answer either way."""
    monkeypatch.setattr(context, "_LEAD_STEPS", steps)
    expected = SUSPECT.search(text) is not None or _SUSPECT_ESCAPE.search(text) is not None
    assert suspect_bytes(text.encode()) == expected


def test_a_line_of_unicode_space_in_a_row_file_reads_as_a_blank_line(tmp_path):
    source = importer_export(tmp_path / "export")
    clean = validate_export(tmp_path / "export")
    path = next(source.glob("activations/batch-*.jsonl.gz"))
    rows = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(rows + "\u3000\n".encode()))

    assert validate_export(tmp_path / "export").problems == clean.problems


def test_a_gzip_file_that_is_strict_json_reads_as_before(tmp_path):
    root = prd_export(tmp_path / "export", compress=True)
    path = next(root.glob("features/*.json.gz"))
    path.write_bytes(
        gzip.compress(gzip.decompress(path.read_bytes()).replace(b"fox", b"f\\u0007x"))
    )

    codes = {p.code for p in validate_export(root).problems if p.file.endswith(path.name)}
    assert codes == {"TOKEN_ENCODING"}


def _nested(levels):
    doc = {"leaf": [1, "a", None]}  # two levels
    for k in range(levels - 2):
        doc = [doc, 3] if k % 2 else {"k": doc, "n": [2.5]}
    return doc


@pytest.mark.parametrize(
    ("levels", "within"), [(MAX_JSON_DEPTH, True), (MAX_JSON_DEPTH + 1, False)]
)
def test_documents_nested_to_the_bound_pass_and_one_deeper_fail(levels, within):
    assert _depth_within(_nested(levels), MAX_JSON_DEPTH) is within
    assert _depth_within(5, MAX_JSON_DEPTH)


def test_a_file_linking_out_of_the_export_is_reported_not_read(tmp_path):
    root = prd_export(tmp_path / "export")
    feature = next((root / "features").glob("*.json"))
    outside = tmp_path / "outside.json"
    outside.write_bytes(feature.read_bytes())
    feature.unlink()
    feature.symlink_to(outside)

    unsafe = [p for p in validate_export(root).problems if p.code == "UNSAFE_PATH"]

    assert [p.file for p in unsafe] == [f"features/{feature.name}"]
