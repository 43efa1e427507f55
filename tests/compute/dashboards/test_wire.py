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
