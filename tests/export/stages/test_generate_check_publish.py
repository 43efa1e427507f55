"""The file-writing, checking and publishing stages against in-memory peers: what compute
streams lands in the archive, the checks catch what is missing, and a published archive is
re-validated from the object store."""

from __future__ import annotations

import io
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio_common.errors import FailedPrecondition
from mistudio_export import generate
from mistudio_export.checking import ArchiveCheck, ArchiveValidator, validate_output
from mistudio_export.generate import (
    FileCount,
    explanation_records,
    feature_labels,
    saelens_frequencies,
)
from mistudio_export.options import ExportOptions
from mistudio_export.packaging import ExportFormat, FormatKind
from mistudio_export.peers import FeatureRecord
from mistudio_export.runtime import JobRuntime
from mistudio_export.validation import Severity
from mistudio_export.validation_summary import ProblemClass, ValidationProblem, ValidationSummary

from tests.export.stages.doubles import job_record
from tests.export.stages.test_pipeline import D_SAE, Peers, neuronpedia

SAELENS_FILES = {"cfg.json": b'{"d_sae": 4}', "sae_weights.safetensors": b"\x00weights\x01"}


def errors(response: ArchiveCheck) -> list[ValidationProblem]:
    return [p for p in response.problems if p.severity is Severity.ERROR]


def archive_members(peers: Peers, key: str) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(peers.objects.objects[key])) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def test_the_saelens_files_compute_streams_are_published_in_the_archive(tmp_path: Path) -> None:
    peers = Peers(tmp_path)
    peers.compute.saelens = dict(SAELENS_FILES)
    outcome = peers.export("weights", ExportOptions(formats=(ExportFormat.SAELENS,)))
    members = archive_members(peers, outcome.result.output_uri)
    assert {k: members[f"saelens/{k}"] for k in SAELENS_FILES} == SAELENS_FILES
    assert "saelens/pretrained_saes.yaml" in members
    assert outcome.result.validation.valid


def test_a_staged_saelens_folder_without_weights_fails_validation(job: JobRuntime) -> None:
    folder = job.staging / "out" / "saelens"
    folder.mkdir(parents=True)
    (folder / "cfg.json").write_text("{}")
    with pytest.raises(FailedPrecondition) as caught:
        validate_output(job, job.staging / "out", [FormatKind.SAELENS], auto_fix=False)
    assert caught.value.field == "config.auto_fix"
    assert not job.checkpoint.HasField("validation")


def test_a_staged_saelens_folder_with_both_files_is_checked_once_and_recorded(
    job: JobRuntime,
) -> None:
    folder = job.staging / "out" / "saelens"
    folder.mkdir(parents=True)
    for name, content in SAELENS_FILES.items():
        (folder / name).write_bytes(content)
    summary = validate_output(job, job.staging / "out", [FormatKind.SAELENS], auto_fix=False)
    assert summary == ValidationSummary(valid=True, files_checked=2)
    assert job.checkpoint.validation.files_checked == 2
    (folder / "cfg.json").unlink()  # a resumed job reads the recorded summary, not the files
    again = validate_output(job, job.staging / "out", [FormatKind.SAELENS], auto_fix=False)
    assert again == summary


def test_a_summary_plus_another_is_valid_only_when_both_are() -> None:
    clean = ValidationSummary(valid=True, files_checked=3, warning_count=1)
    broken = ValidationSummary(
        valid=False,
        files_checked=2,
        error_count=1,
        classes=(ProblemClass("MISSING_FILE", 1, "resume the export"),),
    )
    both = clean.plus(broken)
    assert (both.valid, both.files_checked, both.error_count, both.warning_count) == (
        False,
        5,
        1,
        1,
    )
    assert both.classes == broken.classes
    assert clean.plus(clean).valid


def test_labels_explanations_and_frequencies_come_from_the_feature_records(
    tmp_path: Path,
) -> None:
    store = Peers(tmp_path).store
    for index in store.records:
        store.records[index] = FeatureRecord(index, activation_frequency=index / 10)
    store.records[1] = replace(store.records[1], label="dog names", category="animals")
    labels = feature_labels(store, store.sae, [0, 1, 2])
    assert [(x.feature_index, x.label, x.category) for x in labels] == [(1, "dog names", "animals")]
    assert explanation_records(store, store.sae, []) == []
    assert saelens_frequencies(store, store.sae) == [0.0, 0.1, 0.2, 0.3]
    del store.records[3]
    assert saelens_frequencies(store, store.sae) == []  # not every feature is known


def test_a_published_archive_revalidates_and_a_tampered_one_does_not(tmp_path: Path) -> None:
    peers = Peers(tmp_path)
    key = peers.export("first", neuronpedia()).result.output_uri
    validator = ArchiveValidator(peers.store, peers.objects)
    clean = validator.validate("first", auto_fix=False)
    assert clean.summary.valid and not errors(clean)

    members = archive_members(peers, key)
    victim = next(name for name in members if name.endswith(".json") and "features" in name)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, content in members.items():
            zf.writestr(name, content + b" " if name == victim else content)
    peers.objects.objects[key] = buffer.getvalue()
    tampered = validator.validate("first", auto_fix=False)
    assert not tampered.summary.valid
    assert [(p.code, p.file) for p in errors(tampered)] == [("FILE_UNREADABLE", victim)]


def test_an_archive_of_an_unfinished_job_is_not_validated(tmp_path: Path) -> None:
    peers = Peers(tmp_path)
    peers.store.jobs["running"] = job_record("running")
    validator = ArchiveValidator(peers.store, peers.objects)
    with pytest.raises(FailedPrecondition):
        validator.validate("running", auto_fix=False)


@pytest.mark.parametrize("second_process", [False, True])
def test_the_file_stage_counts_one_pass_over_the_features_for_the_neuronpedia_formats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, second_process: bool
) -> None:
    """The PRD pass writes the other Neuronpedia formats along it (or a second process writes
    some meanwhile), and the SAELENS weights are streamed: the PRD pass's end is the end of the
    writing's count, not a quarter of four formats' (the bench's ETA was x3.59 while the PRD
    files were written) nor half of it with SAELENS (x1.92 in a run under load)."""
    monkeypatch.setattr(generate, "PARALLEL_MIN_FEATURES", 1 if second_process else 10**9)
    monkeypatch.setattr(generate.os, "cpu_count", lambda: 2)
    peers, seen = Peers(tmp_path), list[ppb.Progress]()
    peers.compute.saelens = dict(SAELENS_FILES)  # the weights, streamed: no pass over features
    options = neuronpedia(formats=(ExportFormat.NEURONPEDIA, ExportFormat.SAELENS))
    peers.export("counted", options, seen.append)
    files = [p for p in seen if p.stage == ppb.STAGE_GENERATING_FILES]
    assert {(p.items_total, p.unit) for p in files} == {(D_SAE * 4, FileCount.UNIT)}
    assert [p.items_done for p in files] == sorted(p.items_done for p in files)
    reading = [p for p in files if "read dashboards" in p.message]
    writing = [p for p in files if "writing" in p.message]
    assert reading[-1].items_done == D_SAE  # every dashboard read (one range: none written yet)
    assert writing[-1].items_done == D_SAE * 4  # every feature written: three steps each


def test_the_dashboards_read_and_the_features_written_are_one_count_of_the_file_stage(
    tmp_path: Path,
) -> None:
    """Counted apart, the stage's own rate while the dashboards were read predicted the reading
    alone: the job's ETA left the writing (three quarters of the stage) out until it began."""
    peers, seen = Peers(tmp_path), list[ppb.Progress]()
    peers.export("one-count", neuronpedia(), seen.append)
    files = [p for p in seen if p.stage == ppb.STAGE_GENERATING_FILES]
    reading = [p for p in files if "read dashboards" in p.message]

    assert reading and reading[-1].items_done == generate.READ_STEPS * D_SAE
    assert len({p.items_total for p in files}) == 1
    assert [p.items_done for p in files] == sorted(p.items_done for p in files)
