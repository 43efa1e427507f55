"""Delta exports against an earlier export, merging, and every kind of feature selection."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import pytest
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.export.v1 import export_service_pb2 as epb

from tests.export.service.stack import D_SAE, Stack, export_config, label_features, run_to_end

NEURONPEDIA_ONLY = [epb.EXPORT_FORMAT_NEURONPEDIA]
LABELS = {1: ("dogs", "animals"), 2: ("Cats", "animals"), 3: ("happy", "emotions")}


def export(stack: Stack, sae_id: str, config: epb.ExportConfig) -> epb.ExportProgress:
    request = epb.StartExportRequest(sae_id=sae_id, config=config)
    last = run_to_end(stack.exports.StartExport(request))[-1]
    assert last.progress.state == ppb.JOB_STATE_SUCCEEDED, last.progress.error
    return last


def archive_of(stack: Stack, job_id: str) -> zipfile.ZipFile:
    stream = stack.exports.DownloadExport(epb.DownloadExportRequest(job_id=job_id))
    return zipfile.ZipFile(io.BytesIO(b"".join(m.chunk for m in stream)))


def feature_files(zf: zipfile.ZipFile) -> dict[int, bytes]:
    return {
        int(name.split("/")[1].split(".")[0]): zf.read(name)
        for name in zf.namelist()
        if name.startswith("features/")
    }


@pytest.fixture(scope="module")
def base(stack: Stack, sae_id: str, tokens: tpb.TokenSource) -> epb.ExportProgress:
    label_features(stack, sae_id, LABELS)
    return export(stack, sae_id, export_config(tokens, formats=NEURONPEDIA_ONLY))


@pytest.fixture(scope="module")
def base_features(stack: Stack, base: epb.ExportProgress) -> dict[int, dict[str, Any]]:
    files = feature_files(archive_of(stack, base.progress.job_id))
    return {index: json.loads(data) for index, data in files.items()}


@pytest.fixture(scope="module")
def relabelled(stack: Stack, sae_id: str, base: epb.ExportProgress) -> set[int]:
    changed = {4: ("numbers", "syntax"), 7: ("dogs", "animals")}
    label_features(stack, sae_id, changed)
    return set(changed)


def test_delta_export_holds_only_changed_features(
    stack: Stack,
    sae_id: str,
    tokens: tpb.TokenSource,
    base: epb.ExportProgress,
    relabelled: set[int],
) -> None:
    config = export_config(tokens, formats=NEURONPEDIA_ONLY, delta_base_job_id=base.progress.job_id)
    delta = export(stack, sae_id, config)
    assert delta.result.feature_count == len(relabelled)
    assert delta.result.features_unchanged == D_SAE - len(relabelled)
    zf = archive_of(stack, delta.progress.job_id)
    assert set(feature_files(zf)) == relabelled
    assert json.loads(zf.read("metadata.json"))["n_features"] == len(relabelled)


def test_merged_delta_holds_the_full_set_and_copies_unchanged_files(
    stack: Stack,
    sae_id: str,
    tokens: tpb.TokenSource,
    base: epb.ExportProgress,
    relabelled: set[int],
) -> None:
    config = export_config(
        tokens,
        formats=NEURONPEDIA_ONLY,
        delta_base_job_id=base.progress.job_id,
        merge_with_base=True,
    )
    merged = export(stack, sae_id, config)
    assert merged.result.feature_count == D_SAE
    assert merged.result.features_unchanged == D_SAE - len(relabelled)
    before = feature_files(archive_of(stack, base.progress.job_id))
    after = feature_files(archive_of(stack, merged.progress.job_id))
    assert after == before  # dashboards did not change, only labels (in explanations/)
    explanations = json.loads(
        archive_of(stack, merged.progress.job_id).read("explanations/explanations.json")
    )
    assert {f["feature_index"] for f in explanations["features"]} == {1, 2, 3, *relabelled}


def selected(stack: Stack, sae_id: str, tokens: tpb.TokenSource, **selection: Any) -> set[int]:
    config = export_config(
        tokens, formats=NEURONPEDIA_ONLY, selection=epb.FeatureSelection(**selection)
    )
    last = export(stack, sae_id, config)
    return set(feature_files(archive_of(stack, last.progress.job_id)))


def midway(values: list[float], i: int) -> float:
    """A bound between two neighbouring values, so float32 rounding in files cannot matter."""
    assert values[i - 1] < values[i]
    return (values[i - 1] + values[i]) / 2


def test_range_selection(stack: Stack, sae_id: str, tokens: tpb.TokenSource, base: Any) -> None:
    assert selected(stack, sae_id, tokens, range=epb.IndexRange(start=4, end=12)) == set(
        range(4, 12)
    )


def test_list_selection(stack: Stack, sae_id: str, tokens: tpb.TokenSource, base: Any) -> None:
    chosen = {3, 9, 30}
    assert selected(stack, sae_id, tokens, list=epb.FeatureList(indices=sorted(chosen))) == chosen


def test_label_selections(
    stack: Stack, sae_id: str, tokens: tpb.TokenSource, base: Any, relabelled: set[int]
) -> None:
    assert selected(stack, sae_id, tokens, labeled_only=True) == {1, 2, 3, *relabelled}
    assert selected(stack, sae_id, tokens, label_contains="cAT") == {2}
    assert selected(stack, sae_id, tokens, category="animals") == {1, 2, 7}


def test_frequency_range_selection(
    stack: Stack,
    sae_id: str,
    tokens: tpb.TokenSource,
    base_features: dict[int, dict[str, Any]],
) -> None:
    frequencies = sorted(f["statistics"]["activation_frequency"] for f in base_features.values())
    low, high = midway(frequencies, 8), midway(frequencies, 20)
    expected = {
        i
        for i, f in base_features.items()
        if low <= f["statistics"]["activation_frequency"] <= high
    }
    got = selected(stack, sae_id, tokens, min_frequency=low, max_frequency=high)
    assert got == expected and 0 < len(got) < D_SAE


def test_max_activation_threshold_selection(
    stack: Stack,
    sae_id: str,
    tokens: tpb.TokenSource,
    base_features: dict[int, dict[str, Any]],
) -> None:
    maxima = sorted(f["statistics"]["max_activation"] for f in base_features.values())
    threshold = midway(maxima, D_SAE // 2)
    expected = {
        i for i, f in base_features.items() if f["statistics"]["max_activation"] >= threshold
    }
    got = selected(stack, sae_id, tokens, min_max_activation=threshold)
    assert got == expected and 0 < len(got) < D_SAE
