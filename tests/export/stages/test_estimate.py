"""An export's per-stage prediction: the computation's stages as the compute service predicts
them for the features not cached yet, this service's own stages from the exports it finished;
and ValidateExport's estimate and preset listing from plain options, without any server."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio_common.errors import FailedPrecondition, NotFound
from mistudio_common.stage_rates import PRIOR_SECONDS_PER_UNIT, machine_pace
from mistudio_export.estimate import ExportEstimator, StageEstimate, predict, saelens_bytes
from mistudio_export.options import ExportOptions
from mistudio_export.packaging import ExportFormat
from mistudio_export.preflight import Planner
from mistudio_export.presets import PRESETS

from tests.export.stages.doubles import job_record
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


def seconds(prediction_stages: list[StageEstimate]) -> dict[int, float]:
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
    prior = PRIOR_SECONDS_PER_UNIT[ppb.STAGE_VALIDATING]
    assert by_stage[ppb.STAGE_VALIDATING] == prior * machine_pace()  # never measured here
    assert prediction.seconds == pytest.approx(sum(by_stage.values()))


def test_the_computation_is_estimated_at_the_batch_size_it_will_run_with(peers: Peers) -> None:
    """The compute plans its feature shards, and so their time, with the batch's rows."""
    plan = peers.plan(neuronpedia(batch_size=4))
    predict(plan, [D_SAE], peers.store, peers.compute)
    assert peers.compute.estimated_batch_sizes[-1] == 4  # before it: the token source's facts


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


def estimator(peers: Peers) -> ExportEstimator:
    """ValidateExport's estimator over the in-memory peers, for an SAE that has weights."""
    peers.store.sae = replace(peers.store.sae, weights_uri="/weights")
    return ExportEstimator(peers.store, peers.compute, Planner(peers.store, peers.compute))


def test_validate_export_estimates_the_selected_features_from_plain_options(
    peers: Peers,
) -> None:
    estimate = estimator(peers).estimate("tiny", neuronpedia(), "alice")
    assert (estimate.feature_count, estimate.features_cached) == (D_SAE, D_SAE)
    assert estimate.features_to_compute == 0 and estimate.estimated_size_bytes > 0
    assert [s.stage for s in estimate.stages] == list(peers.plan(neuronpedia()).stages)
    assert estimate.estimated_seconds == pytest.approx(sum(s.seconds for s in estimate.stages))
    assert any("no export has been measured yet" in w for w in estimate.warnings)


def test_a_saelens_only_estimate_counts_the_weights_and_no_feature(peers: Peers) -> None:
    estimate = estimator(peers).estimate(
        "tiny", ExportOptions(formats=(ExportFormat.SAELENS,)), "alice"
    )
    assert estimate.feature_count == 0
    assert estimate.estimated_size_bytes == saelens_bytes(peers.store.sae)


def test_each_preset_is_estimated_only_when_an_sae_is_named(peers: Peers) -> None:
    presets = estimator(peers)
    named = presets.list_presets("tiny", neuronpedia(), "alice")
    assert [p.preset.name for p in named] == list(PRESETS)
    assert all(p.estimate is not None and p.estimate.feature_count == D_SAE for p in named)
    unnamed = presets.list_presets("", ExportOptions(), "alice")
    assert all(p.estimate is None for p in unnamed)


def test_another_owners_export_as_delta_base_reads_as_a_missing_one(peers: Peers) -> None:
    planner = Planner(peers.store, peers.compute)
    theirs = job_record("theirs", state=ppb.JOB_STATE_SUCCEEDED)
    peers.store.jobs["theirs"] = replace(theirs, owner="mallory")
    errors = []
    for base in ("theirs", "unknown"):
        plan = planner.plan("tiny", neuronpedia(delta_base_job_id=base), "alice")
        with pytest.raises(NotFound) as caught:
            planner.base_job(plan)
        errors.append(str(caught.value).replace(base, "<id>"))
    assert errors[0] == errors[1]


def test_a_delta_export_needs_a_base_with_neuronpedia_dashboards(peers: Peers) -> None:
    planner = Planner(peers.store, peers.compute)
    peers.store.jobs["base"] = job_record(
        "base", formats=(ExportFormat.SAELENS,), state=ppb.JOB_STATE_SUCCEEDED
    )
    plan = planner.plan("tiny", neuronpedia(delta_base_job_id="base"), "alice")
    with pytest.raises(FailedPrecondition) as err:
        planner.base_job(plan)
    assert err.value.field == "config.delta_base_job_id"
    assert "no Neuronpedia dashboards" in err.value.fix
