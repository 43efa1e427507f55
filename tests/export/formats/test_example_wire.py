"""A batch's examples decoded from their bytes at once give the columns the message classes give,
for every value the fields can hold; any other layout, and malformed bytes, are left to them."""

from __future__ import annotations

import numpy as np
import pytest
from google.protobuf.message import DecodeError
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio_common.dashboard import FeatureDashboard
from mistudio_common.dashboard_codec import dashboard_head_from_pb, dashboard_to_pb
from mistudio_export.formats import bulk_json, example_wire
from mistudio_export.formats.bulk_json import StringTable
from mistudio_export.formats.columns import ExampleColumns, example_columns, wire_columns
from mistudio_export.formats.example_wire import TokenCodes, decode_examples

from tests.export.formats.builders import dashboard, example


def odd_dashboards() -> list[FeatureDashboard]:
    """Examples holding what a field can: ids of every varint size and unknown, a token string
    that is another for the same id (a character split over tokens), strings over the eight
    bytes compared at once, empty ones, non-ASCII; zeros that serialisation leaves out;
    negative offsets; another dataset; an empty quantile group; a dead feature."""
    dashboards = [dashboard(i) for i in range(3)] + [dashboard(3, dead=True)]
    odd = example(2.0)
    odd.token_ids[:] = [-1, 2**31 - 1, -(2**31), 300, 0, 5]
    odd.tokens[:] = ["", "a very long token string", "\u00e9t\u00e9", "<0xE2>", "\u2603", "x"]
    dashboards[1].top_examples[0] = odd
    split = example(1.0, 0)
    split.tokens[3] = ""  # id 21831 shown as a piece of a character, elsewhere " fox"
    split.max_value, split.max_token_index, split.qualifying_token_index = 0.0, 0, 0
    split.source.row, split.source.offset, split.source.dataset = 0, -3, "other/dataset"
    dashboards[1].top_examples[1] = split
    dashboards[2].quantile_groups[1].examples[0].values.clear()
    dashboards[2].quantile_groups[0].examples.clear()
    return dashboards


def columns_both_ways(
    batches: list[list[FeatureDashboard]],
) -> list[tuple[ExampleColumns, ExampleColumns | None]]:
    """Each batch read through the message classes and decoded, one read each (a shared
    vocabulary, as the batches of a range share one)."""
    table, codes = StringTable(), TokenCodes(StringTable())
    out = []
    for batch in batches:
        messages = [dashboard_to_pb(d) for d in batch]
        splits = [dpb.FeatureDashboardSplit.FromString(m.SerializeToString()) for m in messages]
        heads = [dashboard_head_from_pb(s) for s in splits]
        expected = example_columns(heads, table, examples=messages)
        out.append((expected, wire_columns(heads, codes, splits)))
    return out


def assert_same(expected: ExampleColumns, got: ExampleColumns) -> None:
    for field in expected.__dataclass_fields__:
        a, b = getattr(expected, field), getattr(got, field)
        if field == "token_codes":  # numbered by another table: the rendered tokens are equal
            continue
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and a.tolist() == b.tolist(), field
        elif isinstance(a, bulk_json.Rendered):
            assert a.data.tobytes() == b.data.tobytes(), field
            assert a.starts.tolist() == b.starts.tolist(), field
        elif field == "datasets":
            assert a == b


def test_decoded_examples_equal_the_columns_the_message_classes_give() -> None:
    batches = [odd_dashboards(), [dashboard(7), *odd_dashboards()[:2]]]  # ids learnt, then met
    for expected, got in columns_both_ways(batches):
        assert got is not None
        assert_same(expected, got)


def test_a_batch_of_no_examples_decodes_to_no_rows() -> None:
    ((expected, got),) = columns_both_ways([[dashboard(0, dead=True)]])
    assert got is not None and got.n_rows == expected.n_rows == 0


def test_tokens_with_more_ids_than_strings_are_all_decoded_alike() -> None:
    dashboards = odd_dashboards()
    dashboards[0].top_examples[0].token_ids.append(9)  # no id pairs with a string any more
    ((expected, got),) = columns_both_ways([dashboards])
    assert got is not None
    assert_same(expected, got)


def serialised(*fields: tuple[int, bytes]) -> bytes:
    """An example's bytes from (tag, encoded value) pairs, in the order given."""
    return b"".join(bytes([tag]) + value for tag, value in fields)


TOKEN = (0x0A, b"\x01a")
IDS = (0x12, b"\x01\x05")
VALUES = (0x1A, b"\x04\x00\x00\x80\x3f")


@pytest.mark.parametrize(
    "example",
    [
        serialised(IDS, TOKEN, VALUES),  # another order
        serialised(TOKEN, IDS, TOKEN, VALUES),  # the repeated strings split
        serialised(TOKEN, IDS, VALUES, (0x78, b"\x01")),  # an unknown field (15)
        serialised(TOKEN, (0x10, b"\x05"), VALUES),  # ids not packed
        serialised(TOKEN, IDS, (0x1A, b"\x08\x00")),  # a record past the example's end
        serialised(TOKEN, IDS, VALUES, (0x28, b"\xff" * 11)),  # a varint over ten bytes
    ],
    ids=["order", "split", "unknown", "unpacked", "cut", "overlong"],
)
def test_another_layout_or_malformed_bytes_are_left_to_the_message_classes(
    example: bytes,
) -> None:
    canonical = serialised(TOKEN, IDS, VALUES)
    assert decode_examples([canonical]) is not None
    assert decode_examples([canonical, example]) is None


def test_a_token_string_that_is_not_utf8_is_left_to_the_message_classes() -> None:
    good = dashboard_to_pb(dashboard(0)).SerializeToString()
    bad = good.replace(b" quick", b" qu\xffck", 1)  # in the first example, not the head
    heads = [dashboard_head_from_pb(dpb.FeatureDashboard.FromString(good))]
    split = dpb.FeatureDashboardSplit.FromString
    assert wire_columns(heads, TokenCodes(StringTable()), [split(good)]) is not None
    assert wire_columns(heads, TokenCodes(StringTable()), [split(bad)]) is None
    with pytest.raises(DecodeError, match="bad UTF-8"):
        dpb.FeatureDashboard.FromString(bad)


VARINTS = [0, 1, 127, 128, 300, 16383, 16384, 2**31 - 1, 2**35, 2**62, -1, -5, -(2**31)]


def test_packed_varints_read_protobufs_own_packing_in_records():
    records = [VARINTS[:3], [], VARINTS[3:], [-1]]
    packed = [dpb.Histogram(counts=r).SerializeToString()[2:] for r in records]  # key, length
    values, counts = example_wire.packed_varints(
        b"".join(packed), np.array([len(p) for p in packed])
    )
    assert values.tolist() == [*VARINTS, -1]
    assert counts.tolist() == [len(r) for r in records]
    ones, one_counts = example_wire.packed_varints(bytes([5, 0, 127]), np.array([1, 2]))
    assert ones.tolist() == [5, 0, 127] and one_counts.tolist() == [1, 2]


def test_packed_varints_refuse_a_cut_or_overlong_varint():
    with pytest.raises(ValueError, match="ends inside"):
        example_wire.packed_varints(bytes([0x80, 1]), np.array([1, 1]))
    with pytest.raises(ValueError, match="ten bytes"):
        example_wire.packed_varints(bytes([0xFF] * 10 + [1]), np.array([11]))
