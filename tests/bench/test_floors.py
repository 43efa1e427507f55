"""The bench's byte floors: this machine's orjson and deflate rates on real output, and each
stage's floor as the output's bytes over the rates that bound it."""

from __future__ import annotations

import orjson
import pytest

from bench.measure import FLOOR_RATES, byte_rates, floors

DOC = orjson.dumps({"values": [0.125 * i for i in range(2000)], "tokens": ["▁the"] * 500})


def test_byte_rates_are_measured_for_serialising_parsing_and_deflating() -> None:
    rates = byte_rates([DOC] * 4, seconds=0.05)
    assert set(rates) == {"dumps", "loads", "deflate"}
    assert all(r > 1e6 for r in rates.values())  # any machine moves more than 1 MB/s


def test_byte_rates_refuse_samples_that_are_not_json() -> None:
    with pytest.raises(orjson.JSONDecodeError):
        byte_rates([b"{not json"], seconds=0.01)


def test_floors_divide_each_stage_s_bytes_by_its_rates() -> None:
    sizes = {"json_bytes": 600, "gzip_bytes": 200, "output_bytes": 1000}
    rates = {"dumps": 100.0, "loads": 200.0, "deflate": 50.0}
    assert floors(sizes, rates) == {
        "serialization": 10.0,  # JSON / dumps + the files written gzipped / deflate
        "validation": 3.0,  # JSON / loads
        "archive": 16.0,  # what the ZIP deflates (gzip files are stored) / deflate
        "whole_export": 26.0,  # after the pass: serialise and deflate everything once
    }
    assert set(floors(sizes, rates)) == set(FLOOR_RATES)
