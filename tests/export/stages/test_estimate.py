"""An export's per-stage prediction: the computation's stages as the compute service predicts
them for the features not cached yet, this service's own stages from the exports it finished."""

from __future__ import annotations

from pathlib import Path

import pytest
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio_common.stage_rates import PRIOR_SECONDS_PER_UNIT
from mistudio_export.estimate import predict

from tests.export.stages.test_pipeline import D_SAE, Peers, neuronpedia

PASS_PER_FEATURE, LENS_PER_FEATURE = 3.0, 0.5


@pytest.fixture
def peers(tmp_path: Path) -> Peers:
    peers = Peers(tmp_path)
    peers.compute.seconds_per_feature = {
        ppb.STAGE_ACTIVATION_PASS: PASS_PER_FEATURE,
        ppb.STAGE_LOGIT_LENS: LENS_PER_FEATURE,
    }
    return peers


def seconds(prediction_stages: list[ppb.StageEstimate]) -> dict[int, float]:
    return {s.stage: s.seconds for s in prediction_stages}


def test_the_computation_is_predicted_by_compute_for_the_features_not_cached(
    peers: Peers,
) -> None:
    plan = peers.plan(neuronpedia())
    uncached = [D_SAE, D_SAE + 1]  # the store caches 0..D_SAE-1
    prediction = predict(plan, [*range(D_SAE), *uncached], peers.store, peers.compute)
    by_stage = seconds(prediction.stages)
    assert [s.stage for s in prediction.stages] == list(plan.stages)
    assert prediction.features_cached == D_SAE
    assert by_stage[ppb.STAGE_ACTIVATION_PASS] == PASS_PER_FEATURE * len(uncached)
    assert by_stage[ppb.STAGE_LOGIT_LENS] == LENS_PER_FEATURE * len(uncached)
    assert by_stage[ppb.STAGE_VALIDATING] == PRIOR_SECONDS_PER_UNIT[ppb.STAGE_VALIDATING]
    assert prediction.seconds == pytest.approx(sum(by_stage.values()))


def test_cached_features_cost_no_computation(peers: Peers) -> None:
    plan = peers.plan(neuronpedia())
    prediction = predict(plan, range(D_SAE), peers.store, peers.compute)
    assert prediction.computation is None
    assert seconds(prediction.stages)[ppb.STAGE_ACTIVATION_PASS] == 0.0


def test_after_one_export_its_own_stages_follow_what_it_measured(peers: Peers) -> None:
    """A finished export's file stages fit the rates: the next export of twice the features
    is predicted to take twice its measured times."""
    plan = peers.plan(neuronpedia())
    prior = seconds(predict(plan, range(D_SAE), peers.store, peers.compute).stages)
    peers.export("measured", neuronpedia())
    measured = {s.stage: s.elapsed_seconds for s in peers.store.jobs["measured"].progress.stages}
    after = seconds(predict(plan, range(2 * D_SAE), peers.store, peers.compute).stages)
    for stage in (ppb.STAGE_GENERATING_FILES, ppb.STAGE_VALIDATING_OUTPUT):
        assert after[stage] == pytest.approx(2 * measured[stage])
        assert after[stage] != pytest.approx(2 * prior[stage])
