"""The planning and the estimate on plain requests, without gRPC: what a ComputeDashboards or
an EstimateComputation request runs, and each refusal naming the request's field and a fix."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio_common.dashboard import DashboardParams
from mistudio_common.dashboard_options import Component
from mistudio_common.errors import InvalidArgument
from mistudio_common.stage_rates import StageRates
from mistudio_compute.config import ComputeSettings
from mistudio_compute.estimate import estimate_computation
from mistudio_compute.hooks import HookKind
from mistudio_compute.input_files import Opener
from mistudio_compute.jobs import job_stages
from mistudio_compute.model_access import LoadedModel
from mistudio_compute.planning import Planner
from mistudio_compute.tokens import TokenSourceSpec
from mistudio_compute.values import ComputationRequest, EstimateRequest, SaeFiles

from tests.compute.builders import TINY_VOCAB, tiny_model, write_sae_folder

TINY = "tiny-model"
D_SAE = 64
ROWS, CONTEXT = 12, 16


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return tiny_model()


@pytest.fixture
def planner(tmp_path: Path, tiny: LoadedModel) -> Planner:
    def load(
        ref: str, device: str, open_input: Opener, *, transformer_lens_forward: bool
    ) -> LoadedModel:
        assert ref == TINY
        return tiny

    settings = ComputeSettings(data_dir=tmp_path / "compute", input_roots=(tmp_path,), device="cpu")
    # an SAE given as files never asks the store
    return Planner(settings, store=None, model_loader=load)  # type: ignore[arg-type]


@pytest.fixture
def sae(tmp_path: Path) -> SaeFiles:
    folder = write_sae_folder(tmp_path / "sae", "standard", d_in=32, d_sae=D_SAE)
    return SaeFiles(str(folder), model_id=TINY)


@pytest.fixture
def tokens(tmp_path: Path) -> TokenSourceSpec:
    rng = np.random.default_rng(0)
    ids = rng.integers(3, TINY_VOCAB, size=(ROWS, CONTEXT), dtype=np.int32)
    ids[:, 0] = 1
    np.save(tmp_path / "tokens.npy", ids)
    return TokenSourceSpec(token_file=str(tmp_path / "tokens.npy"), dataset_name="tiny")


def test_a_request_is_prepared_with_its_parameters_filled_in_and_its_features_sorted(
    planner: Planner, sae: SaeFiles, tokens: TokenSourceSpec
) -> None:
    params = DashboardParams(n_top_examples=30)
    request = ComputationRequest(sae, tokens, params, feature_indices=(9, 2, 9), batch_size=4)
    prepared = planner.prepare(request)
    assert prepared.feature_indices == [2, 9]
    assert prepared.params == replace(params, token_source_fingerprint=prepared.dataset.fingerprint)
    assert prepared.dataset.prepend_bos and prepared.dataset.n_tokens == ROWS * CONTEXT
    assert prepared.batch_rows == 4 and prepared.resolved.model_id == TINY


def test_a_hook_without_a_logit_lens_leaves_it_out_before_the_job_runs(
    planner: Planner, sae: SaeFiles, tokens: TokenSourceSpec
) -> None:
    request = ComputationRequest(sae, tokens, hook_point="blocks.0.attn.hook_q")
    prepared = planner.prepare(request)
    assert Component.LOGIT_LENS in prepared.params.omitted
    assert ppb.STAGE_LOGIT_LENS not in job_stages(prepared.params)


REFUSALS: list[tuple[str, dict[str, Any], str]] = [
    ("a bound", {"params": DashboardParams(n_top_examples=5)}, "params.n_top_examples"),
    (
        "an explanation switch",
        {"params": DashboardParams(omitted=frozenset({Component.EXPLANATIONS}))},
        "params.omitted_components",
    ),
    ("a negative batch", {"batch_size": -1}, "batch_size"),
    ("no SAE", {"sae": None}, "sae"),
    ("no SAE path", {"sae": SaeFiles("", model_id=TINY)}, "sae.files.path"),
    ("no model", {"sae_names_no_model": True}, "model_id"),
    ("a feature beyond the SAE", {"feature_indices": (D_SAE,)}, "feature_indices"),
    ("no token source", {"tokens": TokenSourceSpec()}, "tokens"),
    ("rows beyond the model's context", {"context_size": 64}, "tokens.context_size"),
]


@pytest.mark.parametrize(("what", "change", "field"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_each_refusal_names_the_requests_field_and_a_fix(
    planner: Planner,
    sae: SaeFiles,
    tokens: TokenSourceSpec,
    tmp_path: Path,
    what: str,
    change: dict[str, Any],
    field: str,
) -> None:
    change = dict(change)
    if change.pop("sae_names_no_model", False):
        metadata = {"sae_lens_version": "6.54.12", "hook_name": "blocks.0.hook_resid_post"}
        sae = replace(sae, model_id="", config={"metadata": metadata})
    if "context_size" in change:
        np.save(tmp_path / "long.npy", np.ones((2, 64), dtype=np.int32))
        tokens = replace(tokens, token_file=str(tmp_path / "long.npy"))
        tokens = replace(tokens, context_size=change.pop("context_size"))
    request = replace(ComputationRequest(sae, tokens), **change)
    with pytest.raises(InvalidArgument) as refused:
        planner.prepare(request)
    assert refused.value.field == field and refused.value.fix


def test_the_estimate_predicts_the_stages_a_job_of_the_request_would_run(
    planner: Planner, sae: SaeFiles, tokens: TokenSourceSpec
) -> None:
    omitted = frozenset({Component.TOKEN_AGGREGATION})
    plan = planner.token_plan(EstimateRequest(sae, tokens, DashboardParams(omitted=omitted)))
    estimate = estimate_computation(plan, 0, StageRates.fit([]))
    stages = [s.stage for s in estimate.stages]
    assert stages == job_stages(plan.params) and ppb.STAGE_TOKEN_AGGREGATION not in stages
    assert estimate.seconds == pytest.approx(sum(s.seconds for s in estimate.stages))
    assert not estimate.measured  # no job has run here: the priors
    assert estimate.tokens == ROWS * CONTEXT and (estimate.n_rows, estimate.n_layers) == (ROWS, 2)
    assert estimate.params.token_source_fingerprint == plan.dataset.fingerprint
    assert estimate.peak_memory_bytes == plan.memory.peak_bytes > 0
    fewer = estimate_computation(plan, D_SAE // 8, StageRates.fit([]))
    assert fewer.seconds < estimate.seconds


def test_an_estimate_is_refused_as_the_computation_would_be(
    planner: Planner, sae: SaeFiles, tokens: TokenSourceSpec
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        planner.token_plan(EstimateRequest(sae, tokens, DashboardParams(logit_k=500)))
    assert refused.value.field == "params.logit_k"


def test_a_hook_point_is_named_by_layer_and_kind(planner: Planner) -> None:
    hook = planner.resolve_hook_point(TINY, 1, HookKind.MLP_OUT)
    assert (hook.name, hook.width, hook.n_layers) == ("blocks.1.hook_mlp_out", 32, 2)
