"""The whole pipeline against in-memory peers: an export records its feature hashes beside its
job, and a later export reuses the earlier archive's files for features that did not change."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import orjson
import pytest
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.export.v1 import export_job_pb2 as jpb
from mistudio_common.stages import FILE_STAGES
from mistudio_export.config import ExportSettings
from mistudio_export.estimate import predict
from mistudio_export.generate import COLUMN_FINDINGS, features_to_walk
from mistudio_export.options import ExportOptions
from mistudio_export.packaging import ExportFormat
from mistudio_export.peers import SaeRecord, TokenSource
from mistudio_export.pipeline import ExportPipeline
from mistudio_export.plan import ExportPlan
from mistudio_export.preflight import Planner
from mistudio_export.worker_pool import WorkerPool

from tests.export.stages.conftest import runtime
from tests.export.stages.doubles import MemoryCompute, MemoryObjects, MemoryStore, job_record
from tests.store.helpers import make_dashboard

D_SAE = 4


class Peers:
    def __init__(self, tmp_path: Path) -> None:
        sae = SaeRecord(
            sae_id="tiny",
            model_id="tiny-stories-1M",
            hook_point="blocks.0.hook_resid_post",
            d_in=16,
            d_sae=D_SAE,
            architecture="standard",
        )
        self.store = MemoryStore(sae, [make_dashboard(i) for i in range(D_SAE)])
        self.compute = MemoryCompute()
        self.objects = MemoryObjects()
        self.tmp_path = tmp_path

    def plan(self, options: ExportOptions) -> ExportPlan:
        return Planner(self.store, self.compute).plan("tiny", options, "alice")

    def export(
        self,
        job_id: str,
        options: ExportOptions,
        watch: Callable[[ppb.Progress], None] = lambda _: None,
        workers: WorkerPool | None = None,
    ) -> jpb.ExportOutcome:
        """Runs one export to the end (``watch`` gets its progress; its stages use ``workers``
        when given) and records it as the store would."""
        planner = Planner(self.store, self.compute)
        plan = planner.plan("tiny", options, "alice")
        settings = ExportSettings(data_dir=self.tmp_path)
        pipeline = ExportPipeline(settings, self.store, self.compute, planner, self.objects)
        self.store.jobs[job_id] = job_record(job_id, plan.formats)
        job = runtime(job_id, plan, self.tmp_path / job_id)
        job.publish = watch
        job.workers = workers or job.workers
        outcome = pipeline.run(job)
        self.store.jobs[job_id] = replace(
            self.store.jobs[job_id],
            state=ppb.JOB_STATE_SUCCEEDED,
            progress=job.tracker.set_state(ppb.JOB_STATE_SUCCEEDED),
            output_uri=outcome.result.output_uri,
            outcome=outcome,
        )
        return outcome


def neuronpedia(**fields: object) -> ExportOptions:
    """A Neuronpedia export of the tiny SAE; ``fields`` replace any option."""
    tokens = TokenSource(token_file="/data/tokens.npy", dataset_name="tiny")
    options = ExportOptions(formats=(ExportFormat.NEURONPEDIA,), tokens=tokens)
    return replace(options, **fields)  # type: ignore[arg-type]


@pytest.fixture
def peers(tmp_path: Path) -> Peers:
    return Peers(tmp_path)


def test_an_export_records_its_feature_hashes_beside_the_job(peers: Peers) -> None:
    outcome = peers.export("first", neuronpedia())
    assert outcome.result.feature_count == D_SAE
    assert outcome.feature_hash_count == D_SAE
    assert sorted(peers.store.hashes["first"]) == list(range(D_SAE))
    assert outcome.result.output_uri in peers.objects.objects


def test_a_later_export_copies_the_unchanged_features_of_the_earlier_archive(
    peers: Peers,
) -> None:
    peers.export("first", neuronpedia())
    again = peers.export("second", neuronpedia())
    assert again.result.features_unchanged == D_SAE
    assert peers.store.hashes["second"] == peers.store.hashes["first"]


def test_a_delta_export_keeps_only_changed_features_and_records_the_whole_set(
    peers: Peers,
) -> None:
    peers.export("first", neuronpedia())
    records = peers.store.records
    records[2] = replace(records[2], label="dog names")
    delta = peers.export("delta", neuronpedia(delta_base_job_id="first"))
    assert delta.result.feature_count == 1
    assert delta.result.features_unchanged == D_SAE - 1
    before, after = peers.store.hashes["first"], peers.store.hashes["delta"]
    assert sorted(after) == list(range(D_SAE))
    assert [i for i in range(D_SAE) if before[i] != after[i]] == [2]


def test_an_export_checks_its_column_batches_and_what_they_show_gets_the_full_check(
    peers: Peers,
) -> None:
    """The tiny dashboards have 2 examples each (the PRD asks for 10) and a quantile example
    sampled outside its bin: the column checks find both, so every file is checked in full and
    the summary carries the validator's warnings for them."""
    outcome = peers.export("checked", neuronpedia())
    staging = peers.tmp_path / "checked"
    record = orjson.loads((staging / COLUMN_FINDINGS).read_bytes())
    assert {f["code"] for f in record["findings"]} == {"FEW_EXAMPLES", "INCONSISTENT"}
    assert features_to_walk(staging) is None
    summary = outcome.result.validation
    assert {c.code: c.count for c in summary.classes} == {"FEW_EXAMPLES": 4, "INCONSISTENT": 5}


def test_a_running_export_weighs_its_stages_by_their_predicted_seconds(peers: Peers) -> None:
    """The shares a running export's fraction and ETA use are ValidateExport's per-stage
    prediction, not the stage table's: once the checks and the (cached) computation are done,
    the fraction is their predicted share of the whole."""
    options = neuronpedia()
    plan = peers.plan(options)
    predicted = predict(plan, range(D_SAE), peers.store, peers.compute)
    seen: list[ppb.Progress] = []
    peers.export("weighed", options, seen.append)
    writing = next(p for p in seen if p.stage == ppb.STAGE_GENERATING_FILES)
    done_before = [s.seconds for s in predicted.stages if s.stage not in FILE_STAGES]
    assert writing.fraction == pytest.approx(sum(done_before) / predicted.seconds)


def test_the_archive_stage_holds_the_hash_records_and_the_eta_stays_known_to_the_end(
    peers: Peers,
) -> None:
    """Issues 11 and 14: after the upload the job recorded its feature hashes and removed its
    work folder outside every stage, with ETA -1 (unknown) for seconds. The hashes are now
    recorded while the archive stage runs, and from the first estimate on every message has
    one."""
    seen: list[ppb.Progress] = []
    at_hashes: list[ppb.Progress] = []
    record = peers.store.put_feature_hashes

    def recording(job_id: str, hashes: Mapping[int, str]) -> None:
        at_hashes.append(seen[-1])
        record(job_id, hashes)

    peers.store.put_feature_hashes = recording  # type: ignore[method-assign]
    peers.export("ended", neuronpedia(), seen.append)
    archive = at_hashes[0].stages[-1]
    assert archive.stage == ppb.STAGE_CREATING_ARCHIVE and archive.state == ppb.JOB_STATE_RUNNING
    first_estimate = next(i for i, p in enumerate(seen) if p.eta_seconds >= 0)
    assert all(p.eta_seconds >= 0 for p in seen[first_estimate:])
    assert seen[-1].stages[-1].state == ppb.JOB_STATE_SUCCEEDED
