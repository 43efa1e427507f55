import math
import sys

import numpy as np
import orjson
import pytest
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio_common.dashboard import LogitEntry
from mistudio_common.dashboard_codec import (
    dashboard_head_from_pb,
    dashboard_to_pb,
)
from mistudio_export.formats import bulk_json, columns, jsonio
from mistudio_export.formats.bulk_json import ListOf, Quoted, StringTable, each
from mistudio_export.formats.columns import column_batches
from mistudio_export.formats.example_wire import TokenCodes

from tests.export.formats.builders import TOKENS, dashboard, example


def test_rows_are_the_bytes_jsonio_writes_for_the_equal_dicts():
    texts = ["a,b", '"q"', "\\", "é\n", ""]
    values = np.array([-0.0, 0.1, 1e-7, 3e20, 2.5], np.float64)
    table = StringTable()
    strings = table.render(np.array(table.codes(texts), np.int64))
    numbers = bulk_json.numbers(bulk_json.float32_column(values))
    first, stop = np.array([0, 2, 5]), np.array([2, 5, 5])
    rendered = bulk_json.rows(
        {
            "text": ListOf(bulk_json.items(strings, first, stop)),
            "values": ListOf(bulk_json.items(numbers, first, stop)),
            "n": Quoted(each(bulk_json.numbers(np.array([1, 22, 333])))),
            "fixed": {"none": None, "empty": []},
        },
        3,
    )
    expected = [
        {
            "text": texts[a:b],
            "values": values[a:b],
            "n": str(n),
            "fixed": {"none": None, "empty": []},
        }
        for a, b, n in zip(first, stop, [1, 22, 333], strict=True)
    ]
    assert rendered.span(0, 3) == b",".join(jsonio.dumps(row) for row in expected)


def test_alphanumeric_strings_are_the_bytes_jsonio_writes():
    ids = ["c0abc", "cxyz9", "c"]
    rendered = bulk_json.alphanumeric(ids)
    assert rendered.span(0, 3) == jsonio.dumps(ids)[1:-1]
    assert bulk_json.alphanumeric([]).span(0, 0) == b""
    with pytest.raises(ValueError):
        bulk_json.alphanumeric(["a,b"])


def test_record_lists_are_the_bytes_jsonio_writes_for_the_equal_dicts():
    groups = [
        [LogitEntry('a,"b', 7, -0.0, 1), LogitEntry("é", 8, 0.1, 2)],
        [],
        [LogitEntry("", 9, 3e20, 1)],
    ]
    fields = {"token": str, "token_id": int, "value": float, "rank": int}
    rendered = bulk_json.record_lists(groups, fields, StringTable())
    assert rendered is not None
    as_dicts = [[{k: getattr(e, k) for k in fields} for e in g] for g in groups]
    assert [orjson.dumps(r) for r in rendered] == [jsonio.dumps(g) for g in as_dicts]


@pytest.mark.parametrize("value", [1, math.nan, 1e39])
def test_record_lists_leave_a_value_of_another_type_or_unwritable_to_the_caller(value):
    groups = [[LogitEntry("a", 7, value, 1)]]
    fields = {"token": str, "token_id": int, "value": float, "rank": int}
    assert bulk_json.record_lists(groups, fields, StringTable()) is None


def test_gather_in_small_blocks_gives_the_same_bytes(monkeypatch):
    pool = np.frombuffer(b"abcdefghij", np.uint8)
    begin, length = np.array([0, 5, 2, 9], np.int64), np.array([3, 0, 4, 1], np.int64)
    whole = bulk_json.gather(pool, begin, length).tobytes()
    monkeypatch.setattr(bulk_json, "GATHER_BLOCK", 2)
    assert bulk_json.gather(pool, begin, length).tobytes() == whole == b"abccdefj"


def test_a_non_finite_value_is_refused_with_where_it_sits():
    d = dashboard(7)
    d.quantile_groups[1].examples[0].values[3] = math.inf
    with pytest.raises(jsonio.NonFiniteValue) as err:
        list(column_batches([d]))
    assert err.value.field == "/quantile_groups/1/examples/0/values/3"
    assert "feature 7" in str(err.value)


def test_batches_end_at_the_token_budget(monkeypatch):
    monkeypatch.setattr(columns, "TOKENS_PER_BATCH", 100)  # a dashboard holds 13 x 6 tokens
    batches = list(column_batches(dashboard(i) for i in range(3)))
    assert [[d.feature_index for d in b.dashboards] for b in batches] == [[0, 1], [2]]


def test_read_from_their_bytes_batches_end_before_they_could_hold_the_token_budget(monkeypatch):
    wires = [dashboard_to_pb(dashboard(i)).SerializeToString() for i in range(5)]
    for wire in wires:  # an upper bound on the tokens its examples hold
        assert columns.wire_tokens(wire) >= columns.held_tokens(dashboard(0)) == 13 * 6
    monkeypatch.setattr(columns, "TOKENS_PER_BATCH", 2 * columns.wire_tokens(wires[0]))
    batches = list(columns.batch_sized(wires, columns.wire_tokens))
    assert batches == [wires[0:2], wires[2:4], wires[4:]]


def test_a_split_dashboard_reads_as_its_head_and_its_examples_bytes():
    d = dashboard(3)
    message = dashboard_to_pb(d)
    split = dpb.FeatureDashboardSplit.FromString(message.SerializeToString())
    assert dashboard_head_from_pb(split) == dashboard_head_from_pb(message)
    assert list(split.top_examples) == [e.SerializeToString() for e in message.top_examples]
    for group, expected in zip(split.quantile_groups, message.quantile_groups, strict=True):
        assert list(group.examples) == [e.SerializeToString() for e in expected.examples]


def test_every_example_is_a_row_in_write_order():
    d = dashboard(0, n_top=2)
    d.quantile_groups[0].examples.append(example(0.75, row=42))
    (batch,) = column_batches([d])
    assert batch.section.tolist() == [0, 0, 1, 1, 1, 2]
    assert batch.rank.tolist() == [0, 1, 0, 1, 2, 0]
    assert batch.source_row.tolist() == [0, 1, 10, 11, 42, 12]
    first_example = batch.tokens.render(batch.token_codes[:6]).span(0, 6)
    assert orjson.loads(b"[" + first_example + b"]") == TOKENS


def test_fan_out_gives_every_writer_every_batch_of_one_read(monkeypatch):
    monkeypatch.setattr(columns, "CHUNK_FEATURES", 2)
    reads = []

    def read():
        for i in range(5):
            reads.append(i)
            yield dashboard(i)

    seen: dict[str, list[int]] = {"a": [], "b": [], "c": []}

    def writer(name):
        def write(batches):
            for batch in batches:
                seen[name] += [d.feature_index for d in batch.dashboards]

        return write

    columns.fan_out(column_batches(read()), [writer("a"), writer("b"), writer("c")])
    assert reads == [0, 1, 2, 3, 4]
    assert seen == {name: [0, 1, 2, 3, 4] for name in "abc"}


def test_fan_out_writers_take_turns_one_running_at_a_time(monkeypatch):
    monkeypatch.setattr(columns, "CHUNK_FEATURES", 2)
    running, most, order = [], [], []
    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads running at once would interleave within a batch

    def writer(name):
        def write(batches):
            for batch in batches:
                running.append(name)
                most.append(len(running))
                for d in batch.dashboards:
                    order.append((name, d.feature_index))
                    sum(range(20_000))  # work long enough to be interrupted
                running.remove(name)

        return write

    try:
        columns.fan_out(column_batches(dashboard(i) for i in range(6)), [writer(n) for n in "abc"])
    finally:
        sys.setswitchinterval(switch)
    assert max(most) == 1
    # batch by batch: every writer has its turn at a batch before the next batch is read
    assert order == [(n, i) for lo in (0, 2, 4) for n in "bca" for i in (lo, lo + 1)]


def test_fan_out_reraises_a_writers_error_after_the_others_finish():
    finished = []

    def failing(batches):
        next(iter(batches))
        raise ValueError("disk full")

    def whole(batches):
        finished.append(sum(1 for _ in batches))

    with pytest.raises(ValueError, match="disk full"):
        columns.fan_out(column_batches(dashboard(i) for i in range(200)), [whole, failing])
    assert finished == [4]  # 200 dashboards in batches of 64


def test_decoded_columns_equal_the_columns_read_from_the_messages():
    dashboards = [dashboard(i) for i in range(3)] + [dashboard(3, dead=True)]
    odd = example(2.0)  # int32 ids of every varint size, a negative one ten bytes long
    odd.token_ids[:] = [-1, 2**31 - 1, -(2**31), 300, 0, 5]
    dashboards[1].top_examples[0] = odd
    dashboards[2].quantile_groups[1].examples[0].values.clear()
    messages = [dashboard_to_pb(d) for d in dashboards]
    splits = [dpb.FeatureDashboardSplit.FromString(m.SerializeToString()) for m in messages]
    expected = columns.example_columns(dashboards, StringTable(), examples=messages)
    got = columns.wire_columns(dashboards, TokenCodes(StringTable()), splits)
    assert got is not None
    for field in expected.__dataclass_fields__:
        a, b = getattr(expected, field), getattr(got, field)
        if isinstance(a, np.ndarray):
            assert a.dtype == b.dtype and a.tolist() == b.tolist(), field
        elif isinstance(a, bulk_json.Rendered):
            assert a.data.tobytes() == b.data.tobytes() and a.starts.tolist() == b.starts.tolist()
    (row,) = np.flatnonzero((got.position == 1) & (got.section == 0) & (got.rank == 0))
    assert got.token_ids[got.id_start[row] : got.id_start[row + 1]].tolist() == odd.token_ids
