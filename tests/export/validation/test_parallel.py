import math

from mistudio_export.validation import validate_export, validator
from mistudio_export.worker_pool import WorkerPool

from tests.export.validation.files import (
    edit_json,
    importer_export,
    prd_export,
    saedashboard_export,
    upload_export,
)


def _broken_export(root):
    prd_export(root)
    importer_export(root / "neuronpedia-importer")
    saedashboard_export(root / "saedashboard")
    upload_export(root / "upload-payloads")
    edit_json(
        root / "features/0.json", lambda d: d["statistics"].__setitem__("mean_activation", math.nan)
    )
    edit_json(root / "saedashboard/batch-0.json", lambda d: d["features"][1]["pos_str"].pop())
    return root


def test_formats_checked_side_by_side_give_the_same_report(tmp_path, monkeypatch):
    one = validate_export(_broken_export(tmp_path / "one"), fix=True)
    monkeypatch.setattr(validator, "PARALLEL_MIN_BYTES", 0)
    pool = WorkerPool(2, idle_seconds=0)
    two = validate_export(_broken_export(tmp_path / "two"), fix=True, pool=pool)

    assert one.problems and one.changes
    assert (two.problems, two.changes, two.files_checked) == (
        one.problems,
        one.changes,
        one.files_checked,
    )
