"""Our importer rows equal what Neuronpedia's converter makes of our SAEDashboard batches, column
for column, except the differences ``CONVERTER_DIFFERENCES`` lists (and the README shows)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mistudio_export.formats import jsonio
from mistudio_export.formats.columns import column_batches
from mistudio_export.formats.neuronpedia_importer import (
    CONVERTER_DIFFERENCES,
    write_importer_export,
)
from mistudio_export.formats.saedashboard_batch import write_saedashboard_batches

from tests.export.formats.builders import dashboard, naming, sae_info
from tests.reference.neuronpedia_converter import convert_batch

SOURCE = Path("gpt2-small/6-mistudio-res-16k")


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in jsonio.read_bytes(path).decode().splitlines()]


def _compare(table: str, ours: dict[str, Any], theirs: dict[str, Any]) -> None:
    assert set(ours) == set(theirs), table
    for column, value in theirs.items():
        rounding, _ = CONVERTER_DIFFERENCES.get(f"{table}.{column}", (None, ""))
        if rounding is None:
            assert ours[column] == value, f"{table}.{column}"
        elif rounding:
            assert ours[column] == pytest.approx(value, abs=5e-6), f"{table}.{column}"


def test_importer_rows_equal_the_converters_rows_but_for_the_listed_differences(tmp_path):
    dashboards = [dashboard(0), dashboard(1), dashboard(2, dead=True)]
    dashboards[0].top_examples[0].values[1] = 1 / 3  # a value SAEDashboard rounds
    dashboards[1].quantile_groups[0].examples[0].qualifying_token_index = 4  # sampled, not max
    info, names = sae_info(), naming()
    write_saedashboard_batches(tmp_path / "sd", info, names, column_batches(dashboards))
    write_importer_export(tmp_path / "np", info, names, column_batches(dashboards))
    batch = json.loads((tmp_path / "sd/batch-0.json").read_text())
    hook = info.hook_point.rsplit(".", 1)[-1]
    converted = list(convert_batch(batch, names.source_set, hook, info.created_at))
    neurons = _rows(tmp_path / "np" / SOURCE / "features/batch-0.jsonl.gz")
    activations = _rows(tmp_path / "np" / SOURCE / "activations/batch-0.jsonl.gz")
    assert len(neurons) == len(converted) == 3
    assert len(activations) == sum(len(acts) for _, acts in converted)
    for ours, (neuron, _) in zip(neurons, converted, strict=True):
        _compare("Neuron", ours, neuron)
    theirs = [a for _, acts in converted for a in acts]
    for ours, act in zip(activations, theirs, strict=True):
        _compare("Activation", ours, act)
