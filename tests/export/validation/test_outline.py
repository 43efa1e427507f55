"""The outline (validation/outline.py) accepts only bytes orjson parses, and the value at each
span is the one orjson gives there; anything else it refuses, and the file is parsed as before."""

import random

import orjson
import pytest
from mistudio_export.limits import MAX_JSON_DEPTH
from mistudio_export.validation.outline import ARRAY, CHILDREN, NUMBER, OBJECT, STRING, outline

WRITTEN = orjson.dumps(
    {
        "feature_index": 7,
        "features": [
            {"index": 1, "tokens": [" Once", "é", "日本", "😀", 'a"b\\c/d\n\r\t'],
             "values": [0.0, -1.5e-05, 1E5, 12]},
            {"index": 2, "empty": [], "none": {}, "flags": [True, False, None]},
        ],
        "text": "x" * 600,
    }
)  # fmt: skip


def test_each_recorded_value_is_what_orjson_reads_there():
    doc = orjson.loads(WRITTEN)
    shape = outline(WRITTEN, depth=4)
    assert shape is not None
    assert shape.kind(0) == OBJECT and shape.get(0, b"feature_index") == 7
    features = shape.member(0, b"features")
    assert features is not None and shape.kind(features) == ARRAY
    assert shape.value(features) == doc["features"]
    for k, feature in enumerate(shape.children(features).tolist()):
        assert shape.kind(feature) == OBJECT
        assert [shape.key(c).decode() for c in shape.children(feature)] == list(doc["features"][k])
        for child in shape.children(feature).tolist():
            assert shape.value(child) == doc["features"][k][shape.key(child).decode()]
    tokens = shape.member(int(shape.children(features)[0]), b"tokens")
    assert tokens is not None and shape.kind(tokens) == ARRAY
    assert [shape.kind(t) for t in shape.children(tokens)] == [STRING] * 5
    assert int(shape.nodes[tokens, CHILDREN]) == 5
    assert outline(WRITTEN, depth=3).nodes[tokens, CHILDREN] == 5  # counted, not recorded


def test_the_last_of_equal_keys_counts_as_for_orjson():
    data = b'{"feature_index": 1, "feature_index": 2}'
    shape = outline(data, depth=1)
    assert shape is not None
    assert shape.get(0, b"feature_index") == orjson.loads(data)["feature_index"] == 2


def test_levels_below_the_depth_are_checked_but_not_recorded():
    shape = outline(b'{"a": [[1, 2], {"b": 3}], "c": 4.5}', depth=1)
    assert shape is not None
    assert [shape.key(n) for n in shape.children(0)] == [b"a", b"c"]
    assert shape.kind(int(shape.children(0)[1])) == NUMBER
    assert outline(b'{"a": [[1, 2], {"b": 3,}], "c": 4.5}', depth=1) is None


ORJSON_REFUSES = [
    b"", b" ", b"[1,]", b'{"a":1,}', b"01", b"1.", b"-", b".5", b"+1", b"NaN", b"[Infinity]",
    b"1e400", b'"\xed\xa0\x80"', b'"\xc0\x80"', b'"\xf5\x80\x80\x80"', b'"\xe2\x82"', b'"a',
    b'"\x01"', b"\xef\xbb\xbf1", b"[1] x", b"{1: 2}", b'{"a" 1}', b"[1 2]", b"tru", b"nul",
    b'"\\x"', b"[" * 2000 + b"]" * 2000, b'"\\ud800"',
]  # fmt: skip
"""What orjson refuses: the outline must refuse it too."""
PLAIN_SUBSET_REFUSES = [
    b'"\\u0041"', b'"\\b"', b'"\\f"', b"1e100", b"123456789012345678901",
    b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1),
]  # fmt: skip
"""What orjson parses but the outline leaves to it (rare in written files, or suspect text)."""


@pytest.mark.parametrize("data", ORJSON_REFUSES)
def test_what_orjson_refuses_is_refused(data):
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(data)
    assert outline(data, depth=2) is None


@pytest.mark.parametrize("data", PLAIN_SUBSET_REFUSES)
def test_what_is_not_plainly_written_json_is_left_to_orjson(data):
    orjson.loads(data)
    assert outline(data, depth=2) is None


def test_a_document_with_more_nodes_than_room_is_refused():
    assert outline(b"[1, 2, 3]", depth=1, capacity=3) is None
    assert outline(b"[1, 2, 3]", depth=1, capacity=4) is not None


def test_damaged_bytes_are_accepted_only_where_orjson_parses_them():
    """Bytes changed, dropped or repeated at random in a written document: whatever the
    outline accepts, orjson parses, to the same values."""
    rng = random.Random(7)
    alphabet = b'{}[],:"\\ -+.0123456789eEtrufalsn\n\xc3\xa9\xed\xa0\x80\x01'
    accepted = 0
    for _ in range(3000):
        data = bytearray(WRITTEN)
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(data))
            change = rng.randrange(3)
            if change == 0:
                data[at] = alphabet[rng.randrange(len(alphabet))]
            elif change == 1:
                del data[at]
            else:
                data.insert(at, data[at])
        shape = outline(bytes(data), depth=3)
        if shape is None:
            continue
        accepted += 1
        doc = orjson.loads(bytes(data))
        assert shape.value(0) == doc
        if isinstance(doc, dict):
            assert [shape.key(c).decode() for c in shape.children(0)] == list(doc) or len(
                set(doc)
            ) < len(shape.children(0))
    assert accepted > 100  # the test reaches the accepting side
