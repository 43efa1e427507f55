"""Bounded requests: oversized names and lists, an oversized message and a 150 MB cfg.json, each
refused before a job exists with nothing changed; a computation over the memory budget is
accepted for feature shards unless not even one feature fits; and the memory prediction checked
against a measurement."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio.compute.v1 import compute_service_pb2_grpc as cgrpc
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.export.v1 import export_service_pb2_grpc as egrpc
from mistudio_common.dashboard_options import PARAM_BOUNDS
from mistudio_common.errors import ResourceExhausted
from mistudio_common.server import MAX_MESSAGE_BYTES, insecure_channel
from mistudio_compute.dashboards.memory import PLANNED_SHARE, MemoryModel, plan_within_budget
from mistudio_compute.dashboards.params import state_config
from mistudio_compute.messages import params_of
from mistudio_export.limits import MAX_FEATURES_LISTED, MAX_NAME_CHARS

from tests.export.service.errors import details
from tests.export.service.stack import D_SAE, STORIES_REF, Stack, export_config, run_to_end
from tests.security.conftest import MEMORY_BUDGET
from tests.security.unchanged import assert_unchanged, snapshot

LARGEST = dpb.DashboardParams(**{name: high for name, (_, high) in PARAM_BOUNDS.items()})
LARGEST_PARAMS = params_of(LARGEST)
LARGEST_STATE = state_config(LARGEST_PARAMS, frozenset())
CONTEXT = 128


def start_error(stack: Stack, request: epb.StartExportRequest) -> dict[str, Any]:
    with pytest.raises(grpc.RpcError) as caught:
        run_to_end(stack.exports.StartExport(request))
    return details(caught.value)


def refused(stack: Stack, workdir: Path, request: epb.StartExportRequest) -> dict[str, Any]:
    before = snapshot(stack, workdir)
    found = start_error(stack, request)
    assert_unchanged(stack, workdir, before)
    return found


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (
            epb.ExportConfig(naming=epb.NeuronpediaNaming(release_title="t" * 10_000)),
            "config.naming.release_title",
        ),
        (
            epb.ExportConfig(tokens=tpb.TokenSource(dataset_name="d" * 1_000_000)),
            "config.tokens.dataset_name",
        ),
        (
            epb.ExportConfig(
                selection=epb.FeatureSelection(
                    list=epb.FeatureList(indices=[0] * (MAX_FEATURES_LISTED + 1))
                )
            ),
            "config.selection.list.indices",
        ),
    ],
)
def test_oversized_fields_are_refused_naming_the_field(
    stack: Stack, sae_id: str, workdir: Path, tokens: tpb.TokenSource, config: Any, field: str
) -> None:
    if not config.HasField("tokens"):
        config.tokens.CopyFrom(tokens)
    found = refused(stack, workdir, epb.StartExportRequest(sae_id=sae_id, config=config))
    assert found["code"] == grpc.StatusCode.INVALID_ARGUMENT
    assert found["fields"] == [field]


def test_a_name_at_the_bound_passes_the_limit_check(
    stack: Stack, sae_id: str, tokens: tpb.TokenSource
) -> None:
    config = export_config(tokens, naming=epb.NeuronpediaNaming(release_title="t" * MAX_NAME_CHARS))
    request = epb.ValidateExportRequest(sae_id=sae_id, config=config)
    assert stack.exports.ValidateExport(request).estimate.feature_count == 32


def test_an_oversized_message_is_refused_by_the_transport(
    stack: Stack, sae_id: str, workdir: Path
) -> None:
    config = epb.ExportConfig(tokens=tpb.TokenSource(dataset_name="d" * (MAX_MESSAGE_BYTES + 1)))
    request = epb.StartExportRequest(sae_id=sae_id, config=config)
    before = snapshot(stack, workdir)
    channel = grpc.insecure_channel(stack.export.address)  # no client-side limit
    with channel, pytest.raises(grpc.RpcError) as caught:
        run_to_end(egrpc.ExportServiceStub(channel).StartExport(request))
    assert details(caught.value)["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert_unchanged(stack, workdir, before)


def test_a_150_mb_cfg_json_is_refused_unread(stack: Stack, root: Path, workdir: Path) -> None:
    folder = root / "huge-cfg"
    folder.mkdir()
    (folder / "sae_weights.safetensors").write_bytes(
        (root / "sae" / "sae_weights.safetensors").read_bytes()
    )
    with (folder / "cfg.json").open("wb") as f:
        f.truncate(150 << 20)  # sparse: the size is what counts
    before = snapshot(stack, workdir)
    request = cpb.ValidateSaeRequest(
        sae=cpb.SaeReference(files=cpb.SaeFiles(path=str(folder))), model_id=STORIES_REF
    )
    with insecure_channel(stack.compute.address) as channel, pytest.raises(grpc.RpcError) as caught:
        cgrpc.ComputeServiceStub(channel).ValidateSae(request)
    found = details(caught.value)
    assert found["code"] == grpc.StatusCode.INVALID_ARGUMENT
    assert "MAX_SAE_CONFIG_BYTES" in found["message"]
    assert_unchanged(stack, workdir, before)


def test_more_features_than_the_budget_holds_at_once_are_accepted_for_feature_shards(
    stack: Stack, sae_id: str, tokens: tpb.TokenSource
) -> None:
    config = export_config(tokens, dashboard=LARGEST)
    memory = MemoryModel.of(LARGEST_PARAMS, LARGEST_STATE, 1, CONTEXT)
    assert memory.peak(D_SAE, CONTEXT, D_SAE) > MEMORY_BUDGET  # all at once would not fit
    request = epb.ValidateExportRequest(sae_id=sae_id, config=config)
    estimate = stack.exports.ValidateExport(request).estimate
    assert estimate.feature_count == D_SAE
    assert 0 < estimate.estimated_peak_memory_bytes <= MEMORY_BUDGET  # in feature shards


def plan(budget: int | None) -> int:
    """Features per shard for every feature at the largest parameters, one row per batch."""
    return plan_within_budget(
        LARGEST_PARAMS, LARGEST_STATE, D_SAE,
        batch_rows=1, seq_len=CONTEXT, n_rows=1, chunk_size=256, budget=budget,
    ).shard_size  # fmt: skip


def test_a_budget_without_room_for_one_feature_is_refused_naming_the_lever() -> None:
    one = MemoryModel.of(LARGEST_PARAMS, LARGEST_STATE, 1, CONTEXT).peak(1, CONTEXT, 256)
    with pytest.raises(ResourceExhausted) as caught:
        plan(math.ceil(one / PLANNED_SHARE) - 2)
    assert caught.value.field == "params.n_quantile_groups"
    assert "MEMORY_BUDGET" in caught.value.fix
    assert plan(math.ceil(one / PLANNED_SHARE) + 1) == 1


def test_fewer_features_at_the_same_parameters_fit_the_budget(
    stack: Stack, sae_id: str, tokens: tpb.TokenSource
) -> None:
    selection = epb.FeatureSelection(range=epb.IndexRange(start=0, end=4))
    config = export_config(tokens, dashboard=LARGEST, selection=selection)
    request = epb.ValidateExportRequest(sae_id=sae_id, config=config)
    assert stack.exports.ValidateExport(request).estimate.feature_count == 4


@pytest.mark.slow
def test_the_memory_prediction_at_the_largest_parameters_is_a_close_upper_bound() -> None:
    """Refusing and sharding rely on it: never below the measured peak, at most 1.6 times it
    (the windows of the largest parameters are wider than the tiny model's rows)."""
    result = subprocess.run(
        [sys.executable, "-m", "tests.security.memory_probe", "8"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stderr
    numbers = json.loads(result.stdout.strip().splitlines()[-1])
    assert numbers["measured"] > 100 << 20  # the windows dominate: a real measurement
    assert 1.0 <= numbers["predicted"] / numbers["measured"] <= 1.6, numbers
