"""The bulk wire writer against protobuf's own encoding: varints of every size (negative ones
as ten bytes), float32s, and UTF-8 texts cut apart with and without a NUL inside one."""

from __future__ import annotations

import numpy as np
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio_compute.dashboards import wire as W

VALUES = [0, 1, 127, 128, 300, 16383, 16384, 2**31 - 1, 2**35, 2**62, -1, -5, -(2**31)]


def test_varints_match_protobuf() -> None:
    values = np.array(VALUES, np.int64)
    sizes = W.varint_sizes(values)
    out = np.zeros(int(sizes.sum()), np.uint8)
    ends = W.put_varints(out, W.exclusive_cumsum(sizes), values)
    assert ends.tolist() == np.cumsum(sizes).tolist()
    # SourceRef.row (field 2) without its key byte; a zero is not serialised, so spelled here
    expected = [dpb.SourceRef(row=v).SerializeToString()[1:] or b"\0" for v in VALUES]
    assert out.tobytes() == b"".join(expected)


def test_one_byte_varints_take_the_short_path() -> None:
    out = np.zeros(3, np.uint8)
    W.put_varints(out, np.array([2, 0, 1]), np.array([5, 7, 127]))
    assert out.tolist() == [7, 127, 5]


def test_float32s_and_keys_parse_back() -> None:
    values = np.array([0.0, -0.0, 1.5, 3.4e38], np.float32)
    out = np.zeros(5 * len(values), np.uint8)
    at = 5 * np.arange(len(values))
    out[at] = W.key(3, W.I32)  # Histogram is doubles; QuantileGroup.bin_contains is float 3
    W.put_float32s(out, at + 1, values)
    for i, value in enumerate(values):
        group = dpb.QuantileGroup.FromString(out[5 * i : 5 * i + 5].tobytes())
        assert np.float32(group.bin_contains).tobytes() == value.tobytes()


def test_utf8_cuts_texts_apart_even_when_one_holds_a_nul() -> None:
    for texts in (["a", "", "é✓", "x y"], ["a\0b", "c", ""], [], ["\0"]):
        data, lengths = W.utf8(texts)
        assert data.tobytes() == "".join(texts).encode()
        assert lengths.tolist() == [len(t.encode()) for t in texts]


def test_records_equal_the_messages_built_field_by_field() -> None:
    # feature 0: two logit entries (one positive, one negative); feature 1: none; feature 2: one
    entries = [
        (0, 4, dpb.LogitEntry(token="é✓", token_id=300, value=-0.0, rank=1)),
        (0, 5, dpb.LogitEntry(token="", token_id=0, value=0.0, rank=1)),
        (2, 4, dpb.LogitEntry(token="a\0b", token_id=7, value=np.float32(1.1).item(), rank=2)),
    ]
    written = W.records(
        np.array([field for _, field, _ in entries]),
        [
            W.Column.text(1, [e.token for *_, e in entries]),
            W.Column(2, W.VARINT, np.array([e.token_id for *_, e in entries])),
            W.Column(3, W.I32, np.array([e.value for *_, e in entries], np.float32)),
            W.Column(4, W.VARINT, np.array([e.rank for *_, e in entries])),
        ],
        np.array([feature for feature, _, _ in entries]),
        3,
    )
    expected = [dpb.FeatureDashboard() for _ in range(3)]
    for feature, field, entry in entries:
        logits = (
            expected[feature].top_positive_logits
            if field == 4
            else expected[feature].top_negative_logits
        )
        logits.append(entry)
    for i, message in enumerate(expected):
        parsed = dpb.FeatureDashboard.FromString(written.of(i))
        assert parsed.SerializeToString(deterministic=True) == message.SerializeToString(
            deterministic=True
        )


def test_float64_records_keep_every_bit() -> None:
    values = np.array([0.0, -0.0, 0.1, 1e300, -5e-324])
    written = W.records(
        np.full(len(values), 9),
        [W.Column(3, W.I64, values), W.Column(4, W.VARINT, np.arange(len(values)))],
        np.zeros(len(values), np.int64),
        1,
    )
    tokens = dpb.FeatureDashboard.FromString(written.of(0)).top_tokens
    assert [t.total_activation for t in tokens] == values.tolist()
    assert [np.float64(t.total_activation).tobytes() for t in tokens] == [
        v.tobytes() for v in values
    ]
    assert [t.count for t in tokens] == list(range(len(values)))
    assert W.records(np.zeros(0, np.int64), [], np.zeros(0, np.int64), 2).bounds == [0, 0, 0]
