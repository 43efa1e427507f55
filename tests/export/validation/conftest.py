"""Dashboards of a real export (stories260K, four features), shared by the column-check tests."""

import gzip
from pathlib import Path

import orjson
import pytest
from google.protobuf import json_format
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio_common.dashboard_codec import dashboard_from_pb

FIXTURE = Path(__file__).parents[1] / "formats" / "data" / "real_export.json.gz"


@pytest.fixture(scope="module")
def dashboards() -> list:
    fixture = orjson.loads(gzip.decompress(FIXTURE.read_bytes()))
    stored = (json_format.ParseDict(d, dpb.FeatureDashboard()) for d in fixture["dashboards"])
    return [dashboard_from_pb(d) for d in stored]
