"""The outline (validation/outline.py, msgspec) accepts only bytes orjson parses, and each value
it keeps is the one orjson gives there; anything else it refuses, and the file is parsed as
before."""

import random

import msgspec
import orjson
import pytest
from mistudio_export.formats.upload_payloads import (
    MAX_EXPLANATION_CHARS,
    MAX_LOGITS,
    MAX_TOKENS_PER_EXAMPLE,
)
from mistudio_export.validation.outline import Batch, Payload, PrdFeature, outline, value

PAYLOAD = msgspec.json.Decoder(Payload)
FEATURE = msgspec.json.Decoder(PrdFeature)

WRITTEN = orjson.dumps(
    {
        "modelId": "gpt2-small",
        "features": [
            {"index": 1, "tokens": [" Once", "é", "日本", "😀", 'a"b\\c/d\n\r\t'],
             "topLogits": [{"token": "x", "value": 1.5}],
             "activations": [{"values": [0.0, -1.5e-05, 1e5, 12], "big": 2**63}]},
            {"index": 2, "empty": [], "none": {}, "flags": [True, False, None],
             "explanations": [{"text": "x" * MAX_EXPLANATION_CHARS}]},
        ],
        "text": "x" * 600,
    }
)  # fmt: skip


def test_each_kept_value_is_what_orjson_reads_there():
    doc = orjson.loads(WRITTEN)
    payload = outline(WRITTEN, PAYLOAD)
    assert payload is not None
    assert value(payload.modelId) == doc["modelId"] and value(payload.source) is None
    assert [value(f.index) for f in payload.features] == [1, 2]
    activations = doc["features"][0]["activations"]
    assert [value(a.values) for a in payload.features[0].activations] == [
        a["values"] for a in activations
    ]


def test_a_missing_key_reads_as_none_as_with_dict_get():
    shape = outline(b'{"source": null}', PAYLOAD)
    assert shape is not None and not shape.modelId and shape.source
    assert value(shape.modelId) is None and value(shape.source) is None


def test_the_last_of_equal_keys_counts_as_for_orjson():
    data = b'{"feature_index": 1, "feature_index": 2}'
    shape = outline(data, FEATURE)
    assert shape is not None
    assert value(shape.feature_index) == orjson.loads(data)["feature_index"] == 2


def test_a_big_integer_reads_as_orjson_reads_it():
    data = b'{"feature_index": 18446744073709551616}'
    shape = outline(data, FEATURE)
    assert shape is not None
    assert value(shape.feature_index) == orjson.loads(data)["feature_index"] == 2.0**64


ORJSON_REFUSES = [
    b"", b" ", b"[1,]", b'{"a":1,}', b"01", b"1.", b"-", b".5", b"+1", b"NaN", b"[Infinity]",
    b"1e400", b"-1e309", b"1" + b"0" * 400, b"1" + b"0" * 250 + b"e99", b'"\xed\xa0\x80"',
    b'"\xc0\x80"', b'"\xf5\x80\x80\x80"', b'"\xe2\x82"', b'"\xff"', b'"a', b'"\x01"',
    b"\xef\xbb\xbf1", b"[1] x", b"{1: 2}", b'{"a" 1}', b"[1 2]", b"tru", b"nul", b'"\\x"',
    b"[" * 1100 + b"]" * 1100, b'"\\ud800"', b'"\\udc00"', b'"\\ud800x"', b"[1\x0c]",
]  # fmt: skip
"""What orjson refuses: the outline must refuse it too, in a field it skips or keeps."""


@pytest.mark.parametrize("data", ORJSON_REFUSES)
def test_what_orjson_refuses_is_refused(data):
    for document in (b'{"skipped": ' + data + b"}", b'{"feature_index": ' + data + b"}"):
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(document)
        assert outline(document, FEATURE) is None


OVER_LIMITS = {
    "topLogits": {"topLogits": [0] * (MAX_LOGITS + 1)},
    "bottomLogits": {"bottomLogits": [0] * (MAX_LOGITS + 1)},
    "explanation": {"explanations": [{"text": "é" * (MAX_EXPLANATION_CHARS + 1)}]},
    "tokens": {"activations": [{"values": [0.5] * (MAX_TOKENS_PER_EXAMPLE + 1)}]},
}


@pytest.mark.parametrize("over", list(OVER_LIMITS))
def test_a_payload_over_an_api_limit_is_left_to_the_full_checks(over):
    """Their repairs need the document."""
    assert outline(orjson.dumps({"features": [OVER_LIMITS[over]]}), PAYLOAD) is None


def test_a_long_example_within_the_limit_is_kept():
    """Its values counted, not only its bytes."""
    values = [0.123456789] * MAX_TOKENS_PER_EXAMPLE
    assert outline(orjson.dumps({"features": [{"activations": [{"values": values}]}]}), PAYLOAD)


def test_a_document_of_another_shape_is_left_to_the_full_checks():
    assert outline(b"[]", FEATURE) is None
    assert outline(b'{"features": {}}', msgspec.json.Decoder(Batch)) is None
    assert outline(b'{"features": [1]}', PAYLOAD) is None


def test_damaged_bytes_are_accepted_only_where_orjson_parses_them():
    """Bytes changed, dropped or repeated at random in a written document: whatever the
    outline accepts, orjson parses, to the same values."""
    rng = random.Random(7)
    alphabet = b'{}[],:"\\ -+.0123456789eEtrufalsnu\n\xc3\xa9\xed\xa0\x80\x01'
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
        shape = outline(bytes(data), PAYLOAD)
        if shape is None:
            continue
        accepted += 1
        doc = orjson.loads(bytes(data))
        assert value(shape.modelId) == doc.get("modelId")
        assert value(shape.source) == doc.get("source")
        assert [value(f.index) for f in shape.features] == [
            f.get("index") for f in doc.get("features", [])
        ]
    assert accepted > 100  # the test reaches the accepting side
