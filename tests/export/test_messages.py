"""The one translation between messages (the peers', the export request's) and the export's
plain values."""

from __future__ import annotations

import pytest
from google.protobuf import struct_pb2, timestamp_pb2
from google.rpc import code_pb2, status_pb2
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.compute.v1 import compute_service_pb2 as cpb
from mistudio.export.v1 import export_job_pb2 as jpb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.store.v1 import store_service_pb2 as spb
from mistudio_common.dashboard import BinScale, DashboardParams, TokenRankMetric
from mistudio_common.dashboard_codec import (
    COMPONENT_FROM_PB,
    METRIC_FROM_PB,
    SCALE_FROM_PB,
    params_from_pb,
)
from mistudio_common.dashboard_options import Component
from mistudio_common.errors import InvalidArgument
from mistudio_export.estimate import ExportEstimate, PresetEstimate, StageEstimate
from mistudio_export.messages import (
    FORMAT_FROM_PB,
    FORMAT_TO_PB,
    RECORDED_TOKENS_KEY,
    SEVERITY_TO_PB,
    computation_progress_from_pb,
    computation_request_to_pb,
    dashboard_request_from_pb,
    estimate_to_pb,
    export_job_from_pb,
    export_options_from_pb,
    preset_to_pb,
    sae_from_pb,
    selection_from_pb,
    stored_formats,
    token_source_from_pb,
    token_source_to_pb,
    validation_problem_to_pb,
    validation_summary_from_pb,
    validation_summary_to_pb,
)
from mistudio_export.options import DashboardRequest, ExportOptions, NamingRequest
from mistudio_export.packaging import EVERY_FORMAT, Compression, ExportFormat
from mistudio_export.peers import ComputationRequest, SaeRecord, TokenSource
from mistudio_export.presets import PRESETS
from mistudio_export.validation import Severity
from mistudio_export.validation_summary import (
    REPORTED,
    ProblemClass,
    ValidationProblem,
    ValidationSummary,
)


def recorded(value: dict[str, str | int]) -> struct_pb2.Struct:
    config = struct_pb2.Struct()
    config.update({RECORDED_TOKENS_KEY: value})
    return config


def test_an_sae_record_keeps_what_the_export_reads() -> None:
    record = sae_from_pb(
        spb.Sae(
            sae_id="s",
            owner="ana",
            d_in=16,
            d_sae=64,
            architecture=spb.ARCHITECTURE_JUMPRELU,
            created_at=timestamp_pb2.Timestamp(seconds=1_736_937_000),
            config=recorded({"token_file": "/t.npy", "context_size": 32}),
        )
    )
    assert (record.sae_id, record.owner, record.d_in, record.d_sae) == ("s", "ana", 16, 64)
    assert record.architecture == "jumprelu"
    assert record.created_at == "2025-01-15T10:30:00Z"
    assert record.recorded_tokens == TokenSource(token_file="/t.npy", context_size=32)


def test_an_sae_without_a_creation_time_or_recorded_tokens_has_neither() -> None:
    record = sae_from_pb(spb.Sae(sae_id="s"))
    assert record.created_at == "" and record.recorded_tokens is None
    assert record.architecture == "standard"


def test_a_recorded_token_source_of_the_wrong_shape_names_the_config_key() -> None:
    with pytest.raises(InvalidArgument) as err:
        sae_from_pb(spb.Sae(sae_id="s", config=recorded({"context_size": "many"})))
    assert err.value.field == f"sae.config.{RECORDED_TOKENS_KEY}"


@pytest.mark.parametrize(
    "message",
    [
        tpb.TokenSource(token_file="/t.npy", dataset_name="d", max_tokens=64),
        tpb.TokenSource(text=tpb.TextFiles(paths=["a.txt", "b.txt"]), prepend_bos=False),
        tpb.TokenSource(text=tpb.TextFiles()),
        tpb.TokenSource(context_size=16, prepend_bos=True),
    ],
)
def test_a_token_source_goes_to_plain_values_and_back_unchanged(message: tpb.TokenSource) -> None:
    assert token_source_to_pb(token_source_from_pb(message)) == message


def test_a_text_source_without_paths_is_still_a_text_source() -> None:
    plain = token_source_from_pb(tpb.TokenSource(text=tpb.TextFiles()))
    assert plain.given and plain.text_paths == ()


def test_a_computation_request_names_the_sae_by_id_and_owner() -> None:
    params = DashboardParams(n_top_examples=30, omitted=frozenset({Component.LOGIT_LENS}))
    request = ComputationRequest(
        request_id="job/dashboards/0",
        sae=SaeRecord(sae_id="s", owner="ana"),
        params=params,
        tokens=TokenSource(token_file="/t.npy"),
        feature_indices=(3, 5),
        batch_size=8,
        device="cpu",
    )
    message = computation_request_to_pb(request)
    assert (message.sae.sae_id, message.sae.sae_owner) == ("s", "ana")
    assert params_from_pb(message.params) == params
    assert list(message.feature_indices) == [3, 5] and message.tokens.token_file == "/t.npy"
    assert (message.batch_size, message.device, message.reuse_cached) == (8, "cpu", True)


def test_a_computation_request_without_tokens_sends_none() -> None:
    request = ComputationRequest("r", SaeRecord(sae_id="s"), DashboardParams(), tokens=None)
    assert not computation_request_to_pb(request).HasField("tokens")


def test_a_failed_computation_carries_its_error_as_a_domain_error() -> None:
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message="bad batch")
    progress = ppb.Progress(job_id="c-1", state=ppb.JOB_STATE_FAILED, error=status)
    event = computation_progress_from_pb(cpb.ComputeProgress(progress=progress))
    assert event.ended and event.computation_id == "c-1"
    assert isinstance(event.error, InvalidArgument) and event.result is None


def test_a_succeeded_computation_carries_its_result_and_a_running_one_none() -> None:
    done = ppb.Progress(job_id="c-1", state=ppb.JOB_STATE_SUCCEEDED)
    result = cpb.ComputeResult(features_computed=4)
    event = computation_progress_from_pb(cpb.ComputeProgress(progress=done, result=result))
    assert event.result == result and event.error is None
    running = ppb.Progress(
        job_id="c-1", state=ppb.JOB_STATE_RUNNING, stage=ppb.STAGE_ACTIVATION_PASS, items_done=2
    )
    event = computation_progress_from_pb(cpb.ComputeProgress(progress=running))
    assert not event.ended and event.result is None
    assert (event.stage, event.items_done) == (ppb.STAGE_ACTIVATION_PASS, 2)


def test_an_export_job_record_has_an_outcome_only_once_the_job_recorded_one() -> None:
    running = export_job_from_pb(spb.ExportJob(job_id="j", state=ppb.JOB_STATE_RUNNING))
    assert running.outcome is None and running.result is None
    outcome = jpb.ExportOutcome(result=epb.ExportResult(output_uri="exports/j.zip"))
    done = export_job_from_pb(
        spb.ExportJob(job_id="j", sae_owner="ana", state=ppb.JOB_STATE_SUCCEEDED, outcome=outcome)
    )
    assert done.outcome == outcome and done.sae_owner == "ana"
    assert done.result is not None and done.result.output_uri == "exports/j.zip"


def test_every_export_format_of_the_contract_has_one_plain_format_and_back() -> None:
    """The contract and the plain enum stay in step: each defined id but UNSPECIFIED maps to a
    plain format, and each plain format to exactly one id."""
    defined = set(epb.ExportFormat.values()) - {epb.EXPORT_FORMAT_UNSPECIFIED}
    assert set(FORMAT_FROM_PB) == defined
    assert set(FORMAT_TO_PB) == set(ExportFormat)
    assert all(FORMAT_FROM_PB[FORMAT_TO_PB[f]] is f for f in ExportFormat)


def test_every_dashboard_enum_of_the_contract_has_one_plain_value() -> None:
    assert set(COMPONENT_FROM_PB) == set(dpb.DashboardComponent.values()) - {0}
    assert set(COMPONENT_FROM_PB.values()) == set(Component)
    assert set(SCALE_FROM_PB) == set(dpb.BinScale.values()) - {0}
    assert set(SCALE_FROM_PB.values()) == set(BinScale)
    assert set(METRIC_FROM_PB) == set(dpb.TokenRankMetric.values()) - {0}
    assert set(METRIC_FROM_PB.values()) == set(TokenRankMetric)


def test_an_export_config_becomes_plain_options_with_unset_left_unset() -> None:
    config = epb.ExportConfig(
        formats=[epb.EXPORT_FORMAT_SAELENS],
        selection=epb.FeatureSelection(list=epb.FeatureList(indices=[4, 4, 1]), category="c"),
        dashboard=dpb.DashboardParams(
            logit_k=20,
            histogram_scale=dpb.BIN_SCALE_LINEAR,
            omitted_components=[dpb.DASHBOARD_COMPONENT_LOGIT_LENS],
        ),
        tokens=tpb.TokenSource(token_file="/t.npy"),
        compression=epb.Compression(gzip_json=True, zip_deflate=True),
        naming=epb.NeuronpediaNaming(model_id="gpt2"),
        device="cpu",
        preset="quick",
    )
    options = export_options_from_pb(config)
    assert options.formats == (ExportFormat.SAELENS,)
    assert options.selection.base == frozenset({1, 4}) and options.selection.category == "c"
    assert options.dashboard == DashboardRequest(
        logit_k=20, histogram_scale=BinScale.LINEAR, omitted=frozenset({Component.LOGIT_LENS})
    )
    assert options.tokens == TokenSource(token_file="/t.npy")
    assert options.gzip_json and options.zip_compression is Compression.DEFLATED
    assert options.naming == NamingRequest(model_id="gpt2")
    assert (options.device, options.preset) == ("cpu", "quick")
    assert export_options_from_pb(epb.ExportConfig()) == ExportOptions()


def test_a_range_selection_stays_a_range() -> None:
    selection = selection_from_pb(epb.FeatureSelection(range=epb.IndexRange(start=2, end=9)))
    assert selection.base == range(2, 9) and not selection.label_filtered
    assert selection_from_pb(epb.FeatureSelection(all=True)).base is None


@pytest.mark.parametrize(
    ("config", "field"),
    [
        (epb.ExportConfig(formats=[epb.EXPORT_FORMAT_UNSPECIFIED]), "config.formats"),
        (epb.ExportConfig(formats=[epb.EXPORT_FORMAT_NEURONPEDIA, 7]), "config.formats"),
        (
            epb.ExportConfig(dashboard=dpb.DashboardParams(omitted_components=[42])),
            "config.dashboard.omitted_components",
        ),
        (
            epb.ExportConfig(dashboard=dpb.DashboardParams(histogram_scale=9)),  # type: ignore[arg-type]
            "config.dashboard.histogram_scale",
        ),
        (
            epb.ExportConfig(dashboard=dpb.DashboardParams(token_rank_metric=9)),  # type: ignore[arg-type]
            "config.dashboard.token_rank_metric",
        ),
        (
            epb.ExportConfig(formats=[epb.EXPORT_FORMAT_SAELENS] * 1001),
            "config.formats",
        ),
    ],
)
def test_a_value_the_contract_does_not_define_is_refused_naming_the_clients_field(
    config: epb.ExportConfig, field: str
) -> None:
    with pytest.raises(InvalidArgument) as err:
        export_options_from_pb(config)
    assert err.value.field == field


def test_a_stored_config_without_formats_writes_every_format() -> None:
    assert stored_formats(epb.ExportConfig()) == EVERY_FORMAT
    assert stored_formats(epb.ExportConfig(formats=[epb.EXPORT_FORMAT_NEURONPEDIA])) == {
        ExportFormat.NEURONPEDIA
    }


@pytest.mark.parametrize("name", list(PRESETS))
def test_a_preset_lists_its_dashboard_options_as_it_applies_them(name: str) -> None:
    listed = preset_to_pb(PresetEstimate(PRESETS[name], None))
    assert dashboard_request_from_pb(listed.dashboard) == PRESETS[name].dashboard
    assert not listed.HasField("estimate")


def test_an_estimate_keeps_its_stages_in_order_and_its_warnings_beside_it() -> None:
    stages = (
        StageEstimate(ppb.STAGE_VALIDATING, 1.0),
        StageEstimate(ppb.STAGE_GENERATING_FILES, 2.5),
    )
    estimate = ExportEstimate(3.5, 8, 6, 2, stages, 1000, 10, ("a warning",))
    listed = preset_to_pb(PresetEstimate(PRESETS["quick"], estimate))
    assert [(s.stage, s.seconds) for s in listed.estimate.stages] == [
        (ppb.STAGE_VALIDATING, 1.0),
        (ppb.STAGE_GENERATING_FILES, 2.5),
    ]
    assert listed.estimate.features_to_compute == 2 and list(listed.warnings) == ["a warning"]
    assert estimate_to_pb(estimate) == listed.estimate


def test_a_validation_summary_is_recorded_and_read_back_unchanged() -> None:
    summary = ValidationSummary(
        valid=False,
        files_checked=12,
        error_count=2,
        warning_count=1,
        classes=(ProblemClass("MISSING_FILE", 2, "resume"), ProblemClass("NAN_VALUE", 1, "fix")),
        fixes_applied=("features/1.json /x: rounded",),
    )
    recorded = validation_summary_to_pb(summary)
    assert [(c.code, c.count) for c in recorded.classes] == [("MISSING_FILE", 2), ("NAN_VALUE", 1)]
    assert validation_summary_from_pb(recorded) == summary


def test_every_reported_severity_has_a_contract_value() -> None:
    assert set(SEVERITY_TO_PB) == REPORTED
    problem = ValidationProblem(Severity.WARNING, "UNEXPECTED_FILE", "x.txt", "not listed", "/a")
    assert validation_problem_to_pb(problem) == epb.ValidationProblem(
        severity=epb.SEVERITY_WARNING,
        code="UNEXPECTED_FILE",
        file="x.txt",
        pointer="/a",
        message="not listed",
    )
