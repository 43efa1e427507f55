import math

import orjson
import pytest
from mistudio_export.formats import bulk_json, jsonio


def test_float_lists_are_written_as_jsonio_writes_the_lists():
    documents = [
        {"a": [0.1, -0.0, 3.0e-8, 1e38], "b": []},
        {"a": [], "b": [2.5]},
        {"a": [1 / 3], "b": [-7.25, 0.0]},
    ]
    expected = [jsonio.dumps(d) for d in documents]
    bulk_json.float_lists(documents, ["a", "b"])
    assert all(isinstance(d["a"], orjson.Fragment) for d in documents)
    assert [jsonio.dumps(d) for d in documents] == expected


@pytest.mark.parametrize("bad", [math.nan, math.inf, 1e39, 3])
def test_a_list_with_a_value_no_float_list_holds_is_left_for_dumps(bad):
    documents = [{"a": [0.5, bad]}, {"a": [1.5]}]
    bulk_json.float_lists(documents, ["a"])
    assert documents == [{"a": [0.5, bad]}, {"a": [1.5]}]
