"""The file-writing, checking and publishing stages against in-memory peers: what compute
streams lands in the archive, the checks catch what is missing, and a published archive is
re-validated from the object store."""

from __future__ import annotations

import io
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio_common.errors import FailedPrecondition
from mistudio_export.checking import ArchiveValidator, validate_output
from mistudio_export.generate import explanation_records, feature_labels, saelens_frequencies
from mistudio_export.packaging import FormatKind
from mistudio_export.peers import FeatureRecord
from mistudio_export.runtime import JobRuntime

from tests.export.stages.doubles import job_record
from tests.export.stages.test_pipeline import Peers, neuronpedia

SAELENS_FILES = {"cfg.json": b'{"d_sae": 4}', "sae_weights.safetensors": b"\x00weights\x01"}


def errors(response: epb.ValidateArchiveResponse) -> list[epb.ValidationProblem]:
    return [p for p in response.problems if p.severity == epb.SEVERITY_ERROR]


def archive_members(peers: Peers, key: str) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(peers.objects.objects[key])) as zf:
        return {name: zf.read(name) for name in zf.namelist()}


def test_the_saelens_files_compute_streams_are_published_in_the_archive(tmp_path: Path) -> None:
    peers = Peers(tmp_path)
    peers.compute.saelens = dict(SAELENS_FILES)
    outcome = peers.export("weights", epb.ExportConfig(formats=[epb.EXPORT_FORMAT_SAELENS]))
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
    clean = validator.validate(epb.ValidateArchiveRequest(job_id="first"))
    assert clean.summary.valid and not errors(clean)

    members = archive_members(peers, key)
    victim = next(name for name in members if name.endswith(".json") and "features" in name)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, content in members.items():
            zf.writestr(name, content + b" " if name == victim else content)
    peers.objects.objects[key] = buffer.getvalue()
    tampered = validator.validate(epb.ValidateArchiveRequest(job_id="first"))
    assert not tampered.summary.valid
    assert [(p.code, p.file) for p in errors(tampered)] == [("FILE_UNREADABLE", victim)]


def test_an_archive_of_an_unfinished_job_is_not_validated(tmp_path: Path) -> None:
    peers = Peers(tmp_path)
    peers.store.jobs["running"] = job_record("running")
    validator = ArchiveValidator(peers.store, peers.objects)
    with pytest.raises(FailedPrecondition):
        validator.validate(epb.ValidateArchiveRequest(job_id="running"))
