"""In an export the values are checked on the column batches before writing; the written bytes
then get a structural check. A fault injected into a batch is found with the code and pointer
the full validator reports for the written file, and sends the export to the full check."""

import dataclasses
import gzip
from pathlib import Path

import orjson
import pytest
from mistudio_export.formats import jsonio
from mistudio_export.formats.columns import column_batches
from mistudio_export.formats.neuronpedia_importer import write_importer_export
from mistudio_export.formats.prd_json import write_prd_export
from mistudio_export.formats.saedashboard_batch import write_saedashboard_batches
from mistudio_export.formats.upload_payloads import write_upload_payloads
from mistudio_export.generate import _record_findings, features_to_walk
from mistudio_export.validation import validate_export
from mistudio_export.validation.column_checks import column_findings

from tests.export.formats.builders import explanation, naming, sae_info


def write_all(out: Path, dashboards: list) -> list:
    batches = list(column_batches(dashboards))
    info = sae_info(d_sae=4096, n_prompts=256)
    write_prd_export(out, info, naming(), batches, [explanation(0)], compress_features=True)
    write_importer_export(out / "neuronpedia-importer", info, naming(), batches, [explanation(0)])
    write_saedashboard_batches(out / "saedashboard", info, naming(), batches, features_per_batch=2)
    write_upload_payloads(out / "upload-payloads", naming(), batches, [explanation(0)])
    return [f for b in batches for f in column_findings(b)]


def places(report) -> set[tuple[str, str, str]]:
    return {(p.code, p.file, p.pointer) for p in report.problems}


def found(findings) -> set[tuple[str, str, str]]:
    return {(f.code, f"features/{f.feature_index}.json.gz", f.pointer) for f in findings}


def test_a_real_export_has_no_findings_and_passes_the_structural_check(dashboards, tmp_path):
    assert write_all(tmp_path, dashboards) == []
    full = validate_export(tmp_path)
    quick = validate_export(tmp_path, columns_checked=True)
    assert full.ok and quick.ok
    assert quick.files_checked == full.files_checked


def with_example(d, section: int, rank: int, **changes):
    if section == 0:
        examples = list(d.top_examples)
        examples[rank] = dataclasses.replace(examples[rank], **changes)
        return dataclasses.replace(d, top_examples=examples)
    groups = list(d.quantile_groups)
    examples = list(groups[section - 1].examples)
    examples[rank] = dataclasses.replace(examples[rank], **changes)
    groups[section - 1] = dataclasses.replace(groups[section - 1], examples=examples)
    return dataclasses.replace(d, quantile_groups=groups)


def faults(d):
    top = d.top_examples[3]
    shorter_tokens = with_example(d, 0, 3, tokens=top.tokens[:-1])
    wrong_max = with_example(d, 0, 3, max_value=top.max_value + 1.0)
    wrong_index = with_example(d, 2, 1, max_token_index=0)
    stats = dataclasses.replace(d.statistics, nonzero_count=-1)
    negative_count = dataclasses.replace(d, statistics=stats)
    return {
        "token/value length mismatch": (shorter_tokens, "LENGTH_MISMATCH", "/activations/3"),
        "stored maximum": (wrong_max, "MAX_VALUE_MISMATCH", "/activations/3/max_value"),
        "maximum index": (
            wrong_index,
            "MAX_INDEX_MISMATCH",
            "/quantile_groups/1/examples/1/max_token_index",
        ),
        "negative count": (negative_count, "SCHEMA_VIOLATION", "/statistics/nonzero_count"),
    }


@pytest.mark.parametrize(
    "fault", ["token/value length mismatch", "stored maximum", "maximum index", "negative count"]
)
def test_a_fault_in_a_batch_is_found_where_the_validator_reports_it(dashboards, tmp_path, fault):
    faulty, code, where = faults(dashboards[1])[fault]
    findings = write_all(tmp_path, [dashboards[0], faulty, dashboards[2]])
    problem = (code, "features/1.json.gz", where)
    assert problem in found(findings)
    assert problem in places(validate_export(tmp_path))


def _replaced(d, part: str, **changes):
    return dataclasses.replace(d, **{part: dataclasses.replace(getattr(d, part), **changes)})


def dashboard_faults(d):
    """Faults of a dashboard's own values (not its examples), one per check of them."""
    edges = list(d.activation_histogram.bin_edges)
    shared_centre = [0.0, 1.0, 0.0, *d.logit_histogram.bin_edges[3:]]
    logits = list(d.top_positive_logits)
    group = dataclasses.replace(d.quantile_groups[1], bin_min=9.0, bin_max=1.0)
    groups = [d.quantile_groups[0], group, *d.quantile_groups[2:]]
    token = dataclasses.replace(d.top_tokens[0], mean_activation=float("inf"))
    return {
        "statistic not finite": (
            _replaced(d, "statistics", std_activation=float("nan")),
            "NON_FINITE", "/statistics/std_activation",
        ),
        "edges decrease": (
            _replaced(d, "activation_histogram", bin_edges=[edges[1], edges[0], *edges[2:]]),
            "HISTOGRAM_EDGES", "/histogram/bin_edges",
        ),
        "bins share a centre": (
            _replaced(d, "logit_histogram", bin_edges=shared_centre),
            "HISTOGRAM_EDGES", "/logit_histogram/bin_edges",
        ),
        "counts off": (
            _replaced(d, "logit_histogram", total_count=d.logit_histogram.total_count + 1),
            "HISTOGRAM_TOTAL_MISMATCH", "/logit_histogram/counts",
        ),
        "logits unsorted": (
            dataclasses.replace(d, top_positive_logits=[logits[1], logits[0], *logits[2:]]),
            "INCONSISTENT", "/logits/top_positive",
        ),
        "bin malformed": (
            dataclasses.replace(d, quantile_groups=groups),
            "INCONSISTENT", "/quantile_groups/1",
        ),
        "token aggregate not finite": (
            dataclasses.replace(d, top_tokens=[token, *d.top_tokens[1:]]),
            "NON_FINITE", "/top_tokens",
        ),
        "dead yet active": (
            _replaced(d, "statistics", dead_feature=True),
            "INCONSISTENT", "/statistics/dead_feature",
        ),
        "maximum below the examples": (
            _replaced(d, "statistics", max_activation=d.statistics.max_activation / 2),
            "STATS_MAX_MISMATCH", "/statistics/max_activation",
        ),
    }  # fmt: skip


@pytest.mark.parametrize("fault", [
    "statistic not finite", "edges decrease", "bins share a centre", "counts off",
    "logits unsorted", "bin malformed", "token aggregate not finite", "dead yet active",
    "maximum below the examples",
])  # fmt: skip
def test_a_fault_in_a_dashboards_own_values_is_found_in_its_batch(dashboards, fault):
    faulty, code, where = dashboard_faults(dashboards[1])[fault]
    (batch,) = column_batches([dashboards[0], faulty, dashboards[2]])
    assert {(f.code, f.feature_index, f.pointer) for f in column_findings(batch)} >= {
        (code, 1, where)
    }
    assert all(f.feature_index == 1 for f in column_findings(batch))


def test_a_finding_other_formats_also_report_sends_every_file_to_the_full_check(
    dashboards, tmp_path
):
    faulty, _, _ = faults(dashboards[1])["stored maximum"]
    findings = write_all(tmp_path / "out", [dashboards[0], faulty])
    _record_findings(tmp_path, findings)
    assert features_to_walk(tmp_path) is None
    _record_findings(tmp_path, [])
    assert features_to_walk(tmp_path) == frozenset()


def test_a_finding_only_the_prd_reports_sends_only_that_features_file_to_the_full_check(
    dashboards, tmp_path
):
    d = dashboards[1]
    groups = [dataclasses.replace(g, examples=g.examples[:1]) for g in d.quantile_groups]
    few = dataclasses.replace(d, top_examples=d.top_examples[:3], quantile_groups=groups)
    findings = write_all(tmp_path / "out", [dashboards[0], few, dashboards[2]])
    _record_findings(tmp_path, findings)
    assert features_to_walk(tmp_path) == {1}
    full = validate_export(tmp_path / "out")
    quick = validate_export(tmp_path / "out", columns_checked=True, walk_features=frozenset({1}))
    assert places(quick) == places(full) == {("FEW_EXAMPLES", "features/1.json.gz", "/activations")}


def test_a_nan_in_a_batch_is_refused_with_the_validators_pointer(dashboards, tmp_path):
    batch = next(iter(column_batches(dashboards)))
    row = 3  # the fourth top example of feature 0
    batch.values[batch.value_start[row] + 2] = float("nan")
    with pytest.raises(jsonio.NonFiniteValue) as refused:
        batch.check()
    write_all(tmp_path, dashboards)
    path = tmp_path / "features" / "0.json.gz"
    doc = orjson.loads(jsonio.read_bytes(path))
    doc["activations"][3]["values"][2] = "__nan__"
    path.write_bytes(gzip.compress(orjson.dumps(doc).replace(b'"__nan__"', b"NaN")))
    assert ("NON_FINITE", "features/0.json.gz", refused.value.field) in places(
        validate_export(tmp_path)
    )


def test_the_structural_check_still_finds_broken_bytes(dashboards, tmp_path):
    write_all(tmp_path, dashboards)
    truncated = tmp_path / "features" / "1.json.gz"
    truncated.write_bytes(truncated.read_bytes()[:-20])
    broken = tmp_path / "saedashboard" / "batch-0.json"
    broken.write_bytes(broken.read_bytes()[:-2])
    report = validate_export(tmp_path, columns_checked=True)
    assert ("FILE_UNREADABLE", "features/1.json.gz", "") in places(report)
    assert ("INVALID_JSON", "saedashboard/batch-0.json", "") in places(report)


def test_a_file_with_suspect_text_gets_the_full_check(dashboards, tmp_path):
    write_all(tmp_path, dashboards)
    path = tmp_path / "features" / "2.json.gz"
    doc = orjson.loads(jsonio.read_bytes(path))
    doc["activations"][0]["tokens"][0] = "\x07"
    path.write_bytes(gzip.compress(orjson.dumps(doc)))
    codes = {p.code for p in validate_export(tmp_path, columns_checked=True).problems}
    assert "TOKEN_ENCODING" in codes


def set_in_row(line: int, key: str, value):
    return lambda rows: rows[line].__setitem__(key, value)


def same_id_as_row_before(rows):
    rows[4]["id"] = rows[3]["id"]


def no_such_feature(rows):
    rows[4]["index"] = "4095"


ACTIVATION_ROW_FAULTS = {
    "hidden creator": (set_in_row(4, "creatorId", "someone"), "HIDDEN_ACTIVATIONS", "/creatorId"),
    "id used twice": (same_id_as_row_before, "DUPLICATE_ID", "/id"),
    "other model": (set_in_row(4, "modelId", "gpt2"), "IDENTITY_MISMATCH", "/modelId"),
    "null maximum": (set_in_row(4, "maxValue", None), "NOT_NULL_MISSING", "/maxValue"),
    "unknown column": (set_in_row(4, "extra", 1), "UNKNOWN_COLUMN", "/extra"),
    "no such feature": (no_such_feature, "ORPHAN_ROW", "/index"),
    "not strict JSON": (set_in_row(4, "binMax", "__nan__"), "NON_FINITE", "/binMax"),
    "index not digits": (set_in_row(4, "index", "four"), "SCHEMA_VIOLATION", "/index"),
}


def edit_activation_rows(path: Path, mutate) -> None:
    """As the writer writes them (orjson, gzip), so that the bytes stay clean; "__nan__"
    becomes a NaN literal."""
    rows = [orjson.loads(line) for line in jsonio.read_bytes(path).splitlines()]
    mutate(rows)
    data = b"".join(orjson.dumps(row) + b"\n" for row in rows)
    path.write_bytes(gzip.compress(data.replace(b'"__nan__"', b"NaN")))


@pytest.mark.parametrize("fault", list(ACTIVATION_ROW_FAULTS))
def test_the_structural_check_of_activation_rows_finds_what_crosses_rows_and_files(
    dashboards, tmp_path, fault
):
    """The rows of an activation file are checked as they are parsed; a row that is not plainly
    the writer's still gets every check, reported where the full check reports it."""
    mutate, code, where = ACTIVATION_ROW_FAULTS[fault]
    write_all(tmp_path, dashboards)
    (path,) = tmp_path.glob("neuronpedia-importer/*/*/activations/batch-0.jsonl.gz")
    edit_activation_rows(path, mutate)
    quick = validate_export(tmp_path, columns_checked=True)
    full = validate_export(tmp_path)
    file = path.relative_to(tmp_path).as_posix()
    assert code in {p.code for p in quick.problems if p.file.startswith("neuronpedia-importer")}
    assert {(p.code, p.file, p.pointer, p.line) for p in quick.problems if p.code == code} == {
        (p.code, p.file, p.pointer, p.line) for p in full.problems if p.code == code
    }
    assert any(p.file == file and p.pointer == where for p in quick.problems if p.code == code)


def rewrite_document(path: Path, mutate) -> None:
    """As the writer writes it (orjson, gzip for .gz), so that the bytes stay clean."""
    doc = orjson.loads(jsonio.read_bytes(path))
    mutate(doc)
    data = orjson.dumps(doc)
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)


def long_logits(doc):
    feature = doc["features"][0]
    feature["topLogits"] = feature["topLogits"] * 30


def long_explanation(doc):
    doc["features"][0]["explanations"] = [{"text": "é" * 600, "explanationModelName": "x"}]


DOCUMENT_FAULTS = {
    "index of another feature": (
        "features/1.json.gz", lambda d: d.__setitem__("feature_index", 0), "INDEX_FILE_MISMATCH",
        "/feature_index",
    ),
    "batch feature twice": (
        "saedashboard/batch-1.json", lambda d: d["features"][0].__setitem__("feature_index", 0),
        "DUPLICATE_FEATURE", "/features/0",
    ),
    "batch of a badly named model": (
        "saedashboard/batch-0.json", lambda d: d.__setitem__("model_id", "GPT 2!"), "NAMING",
        "/model_id",
    ),
    "payload of another model": (
        "upload-payloads/upload-batch-0.json", lambda d: d.__setitem__("modelId", "gpt2"),
        "IDENTITY_MISMATCH", "/modelId",
    ),
    "payload feature twice": (
        "upload-payloads/upload-batch-0.json",
        lambda d: d["features"][1].__setitem__("index", d["features"][0]["index"]),
        "DUPLICATE_FEATURE", "/features/1",
    ),
    "payload logits over the limit": (
        "upload-payloads/upload-batch-0.json", long_logits, "LIMIT_EXCEEDED",
        "/features/0/topLogits",
    ),
    "payload explanation over the limit": (
        "upload-payloads/upload-batch-0.json", long_explanation, "LIMIT_EXCEEDED",
        "/features/0/explanations/0/text",
    ),
}  # fmt: skip


@pytest.mark.parametrize("fault", list(DOCUMENT_FAULTS))
def test_the_structural_check_of_documents_finds_what_crosses_features_and_files(
    dashboards, tmp_path, fault
):
    """Clean documents are read from their outline, no objects built: what the checks left for
    them report (indices, names, identities, duplicates, the API's limits) is still reported
    where the full check reports it."""
    file, mutate, code, where = DOCUMENT_FAULTS[fault]
    write_all(tmp_path, dashboards)
    rewrite_document(tmp_path / file, mutate)
    quick = validate_export(tmp_path, columns_checked=True)
    full = validate_export(tmp_path)
    assert (code, file, where) in places(quick)
    assert {p for p in quick.problems if p.code == code} == {
        p for p in full.problems if p.code == code
    }


def test_a_limit_exceeded_in_an_outlined_payload_is_repaired(dashboards, tmp_path):
    write_all(tmp_path, dashboards)
    path = tmp_path / "upload-payloads" / "upload-batch-0.json"
    rewrite_document(path, long_logits)
    fixed = validate_export(tmp_path, fix=True, columns_checked=True)
    assert [(c.code, c.pointer) for c in fixed.changes] == [
        ("LIMIT_EXCEEDED", "/features/0/topLogits")
    ]
    assert len(orjson.loads(path.read_bytes())["features"][0]["topLogits"]) == 20
    assert validate_export(tmp_path, columns_checked=True).ok
