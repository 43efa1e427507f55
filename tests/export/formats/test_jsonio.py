import base64
import hashlib
import math

import numpy as np
import pytest
from mistudio_export.formats import jsonio


def test_keys_are_sorted_and_output_is_compact():
    assert jsonio.dumps({"b": 1, "a": {"d": 2, "c": 3}}) == b'{"a":{"c":3,"d":2},"b":1}'


def test_floats_are_written_as_shortest_float32_decimal():
    assert jsonio.dumps([float(np.float32(2.214)), 0.1]) == b"[2.214,0.1]"
    assert jsonio.dumps({"x": float(np.float32(0.3))}) == b'{"x":0.3}'


def test_negative_zero_is_written_as_zero():
    assert jsonio.dumps({"v": -0.0, "vs": [-0.0, 1.5]}) == b'{"v":0.0,"vs":[0.0,1.5]}'


def test_decimals_round_floats():
    assert jsonio.dumps([0.123456789, 2.0], decimals=5) == b"[0.12346,2.0]"


def test_integers_and_booleans_stay_as_they_are():
    assert jsonio.dumps({"n": [1, 2], "b": True, "i": 7}) == b'{"b":true,"i":7,"n":[1,2]}'


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_value_raises_with_its_pointer(bad):
    with pytest.raises(jsonio.NonFiniteValue) as err:
        jsonio.dumps({"a": [{"values": [0.0, bad]}]}, where="feature 3")
    assert err.value.field == "/a/0/values/1"
    assert "feature 3" in str(err.value)


def test_non_finite_scalar_raises():
    with pytest.raises(jsonio.NonFiniteValue) as err:
        jsonio.dumps({"statistics": {"std": math.nan}})
    assert err.value.field == "/statistics/std"


def test_float32_overflow_is_rejected_not_written_as_infinity():
    with pytest.raises(jsonio.NonFiniteValue):
        jsonio.dumps({"x": 1e39})


def test_read_bytes_gunzips_gz_files(tmp_path):
    path = tmp_path / "a.json.gz"
    jsonio.write_document(path, b'{"a":1}')
    assert jsonio.read_bytes(path) == b'{"a":1}'


def test_write_atomic_leaves_no_temporary_files(tmp_path):
    jsonio.write_atomic(tmp_path / "f.json", b"{}")
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_content_hash_is_equal_for_equal_written_content():
    assert jsonio.content_hash({"a": 1, "b": [0.5]}) == jsonio.content_hash({"b": [0.5], "a": 1})
    assert jsonio.content_hash({"a": 1}) != jsonio.content_hash({"a": 2})


def test_stable_id_is_cuid_shaped_and_deterministic():
    one = jsonio.stable_id("gpt2-small/6-res", 3, "top", 0)
    assert one == jsonio.stable_id("gpt2-small/6-res", 3, "top", 0)
    assert one != jsonio.stable_id("gpt2-small/6-res", 3, "top", 1)
    assert len(one) == 25 and one[0] == "c" and one.isalnum() and one == one.lower()


def test_stable_ids_of_many_keys_are_each_key_hashed_and_encoded_alone():
    keys = ["gpt2-small/6-res\x1f3\x1ftop\x1f0", "", "é\x1f1"]
    alone = [
        ("c" + base64.b32encode(hashlib.sha256(k.encode()).digest()[:15]).decode().lower())[:25]
        for k in keys
    ]
    assert jsonio.stable_ids(keys) == alone
    assert jsonio.stable_id("gpt2-small/6-res", 3, "top", 0) == alone[0]


def test_dumps_lines_writes_one_object_per_line():
    assert jsonio.dumps_lines([{"a": 1}, {"a": 2}]) == b'{"a":1}\n{"a":2}\n'


def test_numpy_arrays_are_written_like_the_lists_they_hold():
    values = [0.1, -0.0, 2.5, 1e-8]
    as_list = jsonio.dumps({"v": values, "ids": [3, 4]})
    as_arrays = jsonio.dumps({"v": np.array(values, np.float32), "ids": np.array([3, 4])})
    assert as_arrays == as_list == b'{"ids":[3,4],"v":[0.1,0.0,2.5,1e-8]}'


def test_non_finite_value_in_a_numpy_array_is_named():
    with pytest.raises(jsonio.NonFiniteValue) as err:
        jsonio.dumps({"a": {"values": np.array([1.0, 2.0, np.inf], np.float32)}})
    assert err.value.field == "/a/values/2"


def test_mixed_lists_are_converted_item_by_item():
    assert jsonio.dumps([1, 0.5, None, "x", True, [2.5]]) == b'[1,0.5,null,"x",true,[2.5]]'


@pytest.mark.parametrize("length", [2, 9, 25, 33])
def test_stable_ids_of_any_length_are_the_lowercase_base32_of_the_digest(length):
    key = "gpt2-small/6-res\x1f3\x1fq0\x1f7"
    groups = -(-(length - 1) // 8) * 5
    encoded = base64.b32encode(hashlib.sha256(key.encode()).digest()[:groups]).decode().lower()
    assert jsonio.stable_ids([key, key], length) == ["c" + encoded[: length - 1]] * 2
