"""The columnar writers write, byte for byte, what the per-example writers before them wrote.

``data/real_export.json.gz`` holds three dashboards of a bench export (stories260K, d_sae 4096,
20 top examples and 5x5 quantile examples of 25 tokens) and every file the object-per-example
writers (commit a13c44e, the last before ``formats/columns.py``) wrote from them.
"""

import gzip
from pathlib import Path

import orjson
import pytest
from google.protobuf import json_format
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio_common.dashboard_codec import dashboard_from_pb
from mistudio_export.formats import jsonio
from mistudio_export.formats.columns import column_batches
from mistudio_export.formats.neuronpedia_importer import write_importer_export
from mistudio_export.formats.prd_json import write_prd_export
from mistudio_export.formats.saedashboard_batch import write_saedashboard_batches
from mistudio_export.formats.upload_payloads import write_upload_payloads

from tests.export.formats.builders import explanation, naming, sae_info

FIXTURE = Path(__file__).parent / "data" / "real_export.json.gz"


@pytest.fixture(scope="module")
def fixture() -> dict:
    return orjson.loads(gzip.decompress(FIXTURE.read_bytes()))


@pytest.fixture(scope="module")
def written(fixture, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("real")
    stored = (json_format.ParseDict(d, dpb.FeatureDashboard()) for d in fixture["dashboards"])
    dashboards = [dashboard_from_pb(d) for d in stored]
    batches = list(column_batches(dashboards))
    info = sae_info(d_sae=4096, n_prompts=256)
    write_prd_export(out / "prd", info, naming(), batches, [explanation(0)])
    write_importer_export(out / "neuronpedia-importer", info, naming(), batches, [explanation(0)])
    write_saedashboard_batches(out / "saedashboard", info, naming(), batches, features_per_batch=2)
    write_upload_payloads(out / "upload-payloads", naming(), batches, [explanation(0)])
    return out


def test_the_same_files_are_written(fixture, written):
    names = sorted(p.relative_to(written).as_posix() for p in written.rglob("*") if p.is_file())
    assert names == sorted(fixture["expected"])


@pytest.mark.parametrize(
    "folder", ["prd", "neuronpedia-importer", "saedashboard", "upload-payloads"]
)
def test_every_file_has_the_bytes_the_per_example_writers_wrote(fixture, written, folder):
    for name, text in fixture["expected"].items():
        if name.startswith(folder + "/"):
            data = jsonio.read_bytes(written / name).decode()
            differs = next(
                (i for i, (a, b) in enumerate(zip(data, text, strict=False)) if a != b), None
            )
            assert data == text, f"{name}: first difference at character {differs}"
