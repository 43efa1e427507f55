"""Dashboard computations as jobs: streaming, caching, idempotency, reattach, cancel, restart."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import code_pb2
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio.compute.v1 import compute_service_pb2_grpc as cgrpc
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio.store.v1 import store_service_pb2_grpc as sgrpc
from mistudio_common import stage_rates
from mistudio_common.stage_rates import FINALISATION_STAGES, RateFile
from mistudio_compute.tokens import load_token_file

from tests.compute.service.conftest import (
    CONTEXT,
    D_SAE,
    ROWS,
    ComputeHarness,
    compute_request,
    write_tokens,
)

LONG_ROWS = 256
BATCH_ROWS = 2
"""Enough rows, at 2 rows per batch, for a job that is still running when the test acts."""


def until_running(stream: Iterable[cpb.ComputeProgress]) -> Iterator[cpb.ComputeProgress]:
    """Messages up to the first one that shows the activation pass under way."""
    for message in stream:
        yield message
        p = message.progress
        if p.stage == ppb.STAGE_ACTIVATION_PASS and p.items_done > 0:
            return
    raise AssertionError("the job ended before the activation pass was under way")


def assert_pass_not_restarted(resumed: list[cpb.ComputeProgress]) -> None:
    """The resumed job's activation pass goes on from its checkpoint, or (when the job got
    past the pass before it stopped) does not run again at all."""
    passes = [m.progress for m in resumed if m.progress.stage == ppb.STAGE_ACTIVATION_PASS]
    one_batch = BATCH_ROWS * CONTEXT  # the pass reports where it starts: 0 from scratch
    assert all(p.items_done >= one_batch for p in passes[:1]), "the pass restarted"


def long_request(tmp_path: Path, sae_id: str, request_id: str) -> cpb.ComputeDashboardsRequest:
    tokens = write_tokens(tmp_path / "long.npy", rows=LONG_ROWS, seed=1)
    return compute_request(sae_id, tokens, request_id, batch_size=BATCH_ROWS)


def test_compute_streams_a_snapshot_then_stages_then_the_result(
    compute: cgrpc.ComputeServiceStub, registered_sae: str, token_file: Path
) -> None:
    messages = list(compute.ComputeDashboards(compute_request(registered_sae, token_file)))
    first, last = messages[0].progress, messages[-1]
    assert first.job_id and first.stage_count == 7
    assert first.state in (ppb.JOB_STATE_QUEUED, ppb.JOB_STATE_RUNNING)
    assert [s.stage for s in last.progress.stages] == list(range(1, 8))  # VALIDATING..CACHING
    assert all(s.state == ppb.JOB_STATE_SUCCEEDED for s in last.progress.stages)
    assert last.progress.stages[1].items_done == ROWS * CONTEXT  # the pass counts tokens
    sequences = [m.progress.sequence for m in messages]
    assert sequences == sorted(set(sequences))
    assert last.progress.state == ppb.JOB_STATE_SUCCEEDED and last.progress.fraction == 1.0
    assert last.result.features_computed == D_SAE and last.result.features_reused == 0
    assert last.result.tokens_processed == ROWS * CONTEXT
    assert last.result.params_key and last.result.device == "cpu"


def test_dashboards_land_in_the_store_and_a_second_run_reuses_them(
    compute: cgrpc.ComputeServiceStub,
    store_stub: sgrpc.StoreServiceStub,
    registered_sae: str,
    token_file: Path,
) -> None:
    first = list(compute.ComputeDashboards(compute_request(registered_sae, token_file)))[-1]
    features = store_stub.ListFeatures(
        spb.ListFeaturesRequest(sae_id=registered_sae, page_size=100)
    )
    assert len(features.features) == D_SAE
    assert any(f.activation_frequency > 0 for f in features.features)
    again = compute_request(registered_sae, token_file, "req-2", reuse_cached=True)
    second = list(compute.ComputeDashboards(again))[-1]
    assert second.progress.state == ppb.JOB_STATE_SUCCEEDED
    assert second.result.features_reused == D_SAE and second.result.features_computed == 0
    assert second.result.params_key == first.result.params_key
    params = again.params
    params.token_source_fingerprint = load_token_file(token_file, prepend_bos=True).fingerprint
    listed = store_stub.ListCachedDashboards(
        spb.ListCachedDashboardsRequest(sae_id=registered_sae, params=params, page_size=1000)
    )
    assert sorted(d.feature_index for d in listed.dashboards) == list(range(D_SAE))


def test_the_same_request_id_returns_the_same_job(
    compute: cgrpc.ComputeServiceStub, registered_sae: str, token_file: Path
) -> None:
    request = compute_request(registered_sae, token_file, "same-id")
    first = list(compute.ComputeDashboards(request))
    second = list(compute.ComputeDashboards(request))
    assert first[-1].progress.job_id == second[0].progress.job_id
    assert len(second) == 1 and second[0].result == first[-1].result


def test_the_same_request_id_with_another_request_is_already_exists_naming_what_differs(
    compute: cgrpc.ComputeServiceStub, registered_sae: str, token_file: Path
) -> None:
    first = list(compute.ComputeDashboards(compute_request(registered_sae, token_file, "reused")))
    other = compute_request(registered_sae, token_file, "reused", feature_indices=[0, 1])
    with pytest.raises(grpc.RpcError) as caught:
        list(compute.ComputeDashboards(other))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "request.feature_indices" in caught.value.details()
    assert first[-1].progress.job_id in caught.value.details()


def test_watch_reattaches_to_a_running_job(
    compute: cgrpc.ComputeServiceStub, registered_sae: str, tmp_path: Path
) -> None:
    stream = compute.ComputeDashboards(long_request(tmp_path, registered_sae, "watch"))
    seen = list(until_running(stream))
    stream.cancel()  # the client goes away; the job must not
    job_id = seen[0].progress.job_id
    watched = list(compute.WatchComputation(cpb.WatchComputationRequest(job_id=job_id)))
    assert watched[0].progress.sequence >= seen[-1].progress.sequence  # a snapshot comes first
    assert watched[-1].progress.state == ppb.JOB_STATE_SUCCEEDED
    assert watched[-1].result.tokens_processed == LONG_ROWS * CONTEXT
    got = compute.GetComputation(cpb.GetComputationRequest(job_id=job_id))
    assert got.computation.progress.state == ppb.JOB_STATE_SUCCEEDED


def test_cancel_stops_the_job_promptly_with_cancelled(
    compute: cgrpc.ComputeServiceStub, registered_sae: str, tmp_path: Path
) -> None:
    stream = compute.ComputeDashboards(long_request(tmp_path, registered_sae, "cancel"))
    seen = list(until_running(stream))
    job_id = seen[0].progress.job_id
    reply = compute.CancelComputation(cpb.CancelComputationRequest(job_id=job_id), timeout=10)
    assert reply.state == ppb.JOB_STATE_CANCELLED
    last = list(stream)[-1]
    assert last.progress.state == ppb.JOB_STATE_CANCELLED
    assert last.progress.error.code == code_pb2.CANCELLED
    assert last.progress.items_done < last.progress.items_total or (
        last.progress.stage == ppb.STAGE_ACTIVATION_PASS
    )


def test_a_restarted_service_resumes_the_job_from_its_checkpoint(
    harness: ComputeHarness, compute: cgrpc.ComputeServiceStub, registered_sae: str, tmp_path: Path
) -> None:
    stream = compute.ComputeDashboards(long_request(tmp_path, registered_sae, "restart"))
    seen = list(until_running(stream))
    job_id = seen[0].progress.job_id
    checkpoint = Path(harness.settings.data_dir) / "compute" / "jobs" / job_id / "checkpoint"
    for message in stream:  # keep going until a checkpoint is on disk
        if checkpoint.exists() and any(checkpoint.iterdir()):
            seen.append(message)
            break
    harness.stop()
    restarted = harness.start()
    watched = list(restarted.WatchComputation(cpb.WatchComputationRequest(job_id=job_id)))
    assert watched[0].progress.sequence > seen[-1].progress.sequence
    assert watched[-1].progress.state == ppb.JOB_STATE_SUCCEEDED
    assert_pass_not_restarted(watched)
    assert watched[-1].result.features_computed == D_SAE


def test_a_failed_store_write_ends_the_job_failed_with_a_status(
    compute: cgrpc.ComputeServiceStub,
    store_stub: sgrpc.StoreServiceStub,
    registered_sae: str,
    tmp_path: Path,
) -> None:
    stream = compute.ComputeDashboards(long_request(tmp_path, registered_sae, "fail"))
    list(until_running(stream))
    store_stub.DeleteSae(spb.DeleteSaeRequest(sae_id=registered_sae))
    last = list(stream)[-1]
    assert last.progress.state == ppb.JOB_STATE_FAILED
    assert last.progress.error.code == code_pb2.NOT_FOUND
    assert isinstance(last, cpb.ComputeProgress) and not last.HasField("result")


def test_estimates_use_the_rate_measured_by_finished_runs(
    compute: cgrpc.ComputeServiceStub, registered_sae: str, token_file: Path
) -> None:
    list(compute.ComputeDashboards(compute_request(registered_sae, token_file)))
    estimate = compute.EstimateComputation(
        cpb.EstimateComputationRequest(
            sae=cpb.SaeReference(sae_id=registered_sae),
            tokens=tpb.TokenSource(token_file=str(token_file)),
            feature_count=D_SAE,
        )
    )
    assert estimate.rate_source == "measured"
    assert 0 < estimate.estimated_seconds < 60


def test_after_one_run_the_estimate_of_another_size_is_closer_than_the_prior(
    compute: cgrpc.ComputeServiceStub,
    registered_sae: str,
    token_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Stage rates are fitted against each stage's own driver, so on a machine the priors do
    not describe (here: priors a hundred times too slow — ten times was within the run's own
    noise once the pass got faster) a run of all 64 features over 48 rows
    predicts 16 features over 192 rows better than the priors do."""
    for stage, seconds in list(stage_rates.PRIOR_SECONDS_PER_UNIT.items()):
        monkeypatch.setitem(stage_rates.PRIOR_SECONDS_PER_UNIT, stage, 100 * seconds)
    more_rows = write_tokens(tmp_path / "more.npy", rows=4 * ROWS, seed=2)
    features = list(range(0, D_SAE, 4))

    def estimate() -> float:
        request = cpb.EstimateComputationRequest(
            sae=cpb.SaeReference(sae_id=registered_sae),
            tokens=tpb.TokenSource(token_file=str(more_rows)),
            feature_count=len(features),
        )
        return compute.EstimateComputation(request).estimated_seconds

    prior = estimate()
    list(compute.ComputeDashboards(compute_request(registered_sae, token_file)))
    measured = estimate()
    second = compute_request(registered_sae, more_rows, "req-2", feature_indices=features)
    actual = list(compute.ComputeDashboards(second))[-1].progress.elapsed_seconds
    print(f"prior {prior:.3f} s, measured rates {measured:.3f} s, actual {actual:.3f} s")
    assert abs(math.log(measured / actual)) < abs(math.log(prior / actual))


def test_a_sharded_computation_is_predicted_and_measured_with_the_shards_finalisation(
    harness: ComputeHarness, registered_sae: str, token_file: Path
) -> None:
    """Under a 2 MiB budget the 64 features run in shards of 22, 22 and 20: the estimate's
    pass stage holds the first two shards' finalisation (44 of 64 features'), its finalisation
    stages the last shard's, and the run records those stages as timing that shard's 20."""
    run = compute_request(registered_sae, token_file)
    request = cpb.EstimateComputationRequest(
        sae=run.sae, tokens=run.tokens, params=run.params, feature_count=D_SAE
    )
    plain = {s.stage: s.seconds for s in harness.start().EstimateComputation(request).stages}
    harness.stop()
    harness.settings = harness.settings.model_copy(update={"memory_budget_bytes": 2 * 2**20})
    compute = harness.start()
    sharded = {s.stage: s.seconds for s in compute.EstimateComputation(request).stages}
    finalising = [s for s in FINALISATION_STAGES if s in plain]
    in_pass = 44 / 64 * sum(plain[s] for s in finalising)
    assert sharded[ppb.STAGE_ACTIVATION_PASS] == pytest.approx(
        plain[ppb.STAGE_ACTIVATION_PASS] + in_pass
    )
    assert [sharded[s] for s in finalising] == pytest.approx(
        [plain[s] * 20 / 64 for s in finalising]
    )

    stream = list(compute.ComputeDashboards(run))
    assert any("feature shard 2 of 3: finalising" in m.progress.message for m in stream)
    rates = RateFile(Path(harness.settings.data_dir) / "compute" / "stage_rates.json")
    timed = {t.stage: t.size.features for t in rates.times()}
    assert {timed[s] for s in finalising if s in timed} == {20}
    assert timed[ppb.STAGE_CACHING] == D_SAE


def pause_with_a_checkpoint(
    harness: ComputeHarness,
    compute: cgrpc.ComputeServiceStub,
    request: cpb.ComputeDashboardsRequest,
) -> tuple[str, Path, int]:
    """Starts ``request``, pauses it once a checkpoint is on disk; returns (job id, checkpoint
    folder, tokens done when paused)."""
    stream = compute.ComputeDashboards(request)
    seen = list(until_running(stream))
    job_id = seen[0].progress.job_id
    checkpoint = Path(harness.settings.data_dir) / "compute" / "jobs" / job_id / "checkpoint"
    for message in stream:
        seen.append(message)
        if checkpoint.exists() and any(checkpoint.iterdir()):
            break
    reply = compute.PauseComputation(cpb.PauseComputationRequest(job_id=job_id), timeout=10)
    assert reply.state == ppb.JOB_STATE_PAUSED
    stream.cancel()
    got = compute.GetComputation(cpb.GetComputationRequest(job_id=job_id))
    assert got.computation.progress.state == ppb.JOB_STATE_PAUSED
    assert "paused by a client" in got.computation.progress.message
    return job_id, checkpoint, seen[-1].progress.items_done


def test_a_paused_job_keeps_its_checkpoint_and_its_request_id_resumes_it(
    harness: ComputeHarness, compute: cgrpc.ComputeServiceStub, registered_sae: str, tmp_path: Path
) -> None:
    request = long_request(tmp_path, registered_sae, "pause")
    job_id, checkpoint, _ = pause_with_a_checkpoint(harness, compute, request)
    assert any(checkpoint.iterdir())
    resumed = list(compute.ComputeDashboards(request))
    assert {m.progress.job_id for m in resumed} == {job_id}
    assert_pass_not_restarted(resumed)
    assert resumed[-1].progress.state == ppb.JOB_STATE_SUCCEEDED
    assert resumed[-1].result.features_computed == D_SAE


def test_a_paused_job_stays_paused_across_a_restart(
    harness: ComputeHarness, compute: cgrpc.ComputeServiceStub, registered_sae: str, tmp_path: Path
) -> None:
    request = long_request(tmp_path, registered_sae, "pause-restart")
    job_id, _, _ = pause_with_a_checkpoint(harness, compute, request)
    harness.stop()
    restarted = harness.start()
    got = restarted.GetComputation(cpb.GetComputationRequest(job_id=job_id))
    assert got.computation.progress.state == ppb.JOB_STATE_PAUSED
    last = list(restarted.ComputeDashboards(request))[-1]
    assert last.progress.state == ppb.JOB_STATE_SUCCEEDED


def test_cancelling_a_paused_job_ends_it_and_drops_its_checkpoint(
    harness: ComputeHarness, compute: cgrpc.ComputeServiceStub, registered_sae: str, tmp_path: Path
) -> None:
    request = long_request(tmp_path, registered_sae, "pause-cancel")
    job_id, checkpoint, _ = pause_with_a_checkpoint(harness, compute, request)
    reply = compute.CancelComputation(cpb.CancelComputationRequest(job_id=job_id), timeout=10)
    assert reply.state == ppb.JOB_STATE_CANCELLED
    assert not checkpoint.exists()
    again = list(compute.ComputeDashboards(request))
    assert len(again) == 1 and again[0].progress.state == ppb.JOB_STATE_CANCELLED


def test_finished_job_folders_are_removed_after_the_retention_time_and_running_ones_kept(
    harness: ComputeHarness,
    compute: cgrpc.ComputeServiceStub,
    registered_sae: str,
    token_file: Path,
    tmp_path: Path,
) -> None:
    done = list(compute.ComputeDashboards(compute_request(registered_sae, token_file)))[-1]
    stream = compute.ComputeDashboards(long_request(tmp_path, registered_sae, "r"))
    running_id = list(until_running(stream))[-1].progress.job_id
    jobs = harness.settings.data_dir / "compute" / "jobs"
    assert (jobs / done.progress.job_id).is_dir()
    retention = harness.settings.finished_job_retention_seconds
    assert harness.server is not None
    assert harness.server.manager.expire_finished(now=time.time() + retention + 1) == [
        done.progress.job_id
    ]
    assert not (jobs / done.progress.job_id).exists()
    assert (jobs / running_id).is_dir()
    compute.CancelComputation(cpb.CancelComputationRequest(job_id=running_id))


def test_the_estimate_plans_the_shards_with_the_batch_size_the_run_will_use(
    harness: ComputeHarness, registered_sae: str, token_file: Path
) -> None:
    """Under a 1.5 MiB budget a batch of 8 rows leaves room for shards of 22 features (3
    shards), the default 32 rows for 16 (4): an estimate told the run's batch size predicts
    the finalisation stages of the last shard the run will have, 20 of the 64 features."""
    run = compute_request(registered_sae, token_file)
    assert run.batch_size == 8
    request = cpb.EstimateComputationRequest(
        sae=run.sae, tokens=run.tokens, params=run.params, feature_count=D_SAE, batch_size=8
    )
    plain = {s.stage: s.seconds for s in harness.start().EstimateComputation(request).stages}
    harness.stop()
    harness.settings = harness.settings.model_copy(update={"memory_budget_bytes": 3 * 2**19})
    compute = harness.start()
    sharded = {s.stage: s.seconds for s in compute.EstimateComputation(request).stages}
    finalising = [s for s in FINALISATION_STAGES if s in plain]
    assert [sharded[s] for s in finalising] == pytest.approx(
        [plain[s] * 20 / 64 for s in finalising]
    )
    stream = list(compute.ComputeDashboards(run))
    assert any("feature shard 3 of 3" in m.progress.message for m in stream)
    assert not any("of 4" in m.progress.message for m in stream)
