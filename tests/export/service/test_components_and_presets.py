"""Component switches, presets and the shared defaults, through real store, compute and export
services: a part left out has no stage, its fields are empty as the README states, and every
file still validates; the CLI and the contract's defaults name the same cached dashboards."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import grpc
import pytest
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio_cli.main import build_parser
from mistudio_cli.main import main as cli_main
from mistudio_cli.options import export_config as cli_export_config
from mistudio_common.dashboard_codec import COMPONENT_TO_PB
from mistudio_common.dashboard_options import Component
from mistudio_export.packaging.format_notes import LEFT_OUT
from mistudio_export.presets import PRESETS
from mistudio_export.validation import validate_export

from tests.export.service.errors import details
from tests.export.service.stack import Stack, export_config, label_features, run_to_end

STAGE_OF = {
    Component.LOGIT_LENS: ppb.STAGE_LOGIT_LENS,
    Component.ACTIVATION_HISTOGRAM: ppb.STAGE_HISTOGRAMS,
    Component.TOKEN_AGGREGATION: ppb.STAGE_TOKEN_AGGREGATION,
}
EMPTY_FIELDS = {
    Component.TOP_EXAMPLES: ("activations",),
    Component.QUANTILE_EXAMPLES: ("quantile_groups",),
    Component.LOGIT_LENS: (),
    Component.ACTIVATION_HISTOGRAM: (),
    Component.TOKEN_AGGREGATION: ("top_tokens",),
    Component.EXPLANATIONS: (),
}


def export(
    stack: Stack, sae_id: str, config: epb.ExportConfig, request_id: str
) -> tuple[epb.ExportProgress, bytes]:
    request = epb.StartExportRequest(request_id=request_id, sae_id=sae_id, config=config)
    last = run_to_end(stack.exports.StartExport(request))[-1]
    assert last.progress.state == ppb.JOB_STATE_SUCCEEDED, last.progress.error
    stream = stack.exports.DownloadExport(epb.DownloadExportRequest(job_id=last.progress.job_id))
    return last, b"".join(m.chunk for m in stream)


def validated_files(archive: bytes, folder: Path) -> zipfile.ZipFile:
    """The archive, after checking that its extracted files validate (the test of loading)."""
    zipfile.ZipFile(io.BytesIO(archive)).extractall(folder)
    for packaging in ("manifest.json", "README.md", "prefill.json"):
        (folder / packaging).unlink()
    report = validate_export(folder)
    assert report.ok, report.summary()
    return zipfile.ZipFile(io.BytesIO(archive))


def feature(files: zipfile.ZipFile, index: int) -> dict[str, object]:
    return json.loads(files.read(f"features/{index}.json"))


@pytest.fixture(scope="module")
def labelled(stack: Stack, sae_id: str) -> str:
    label_features(stack, sae_id, {1: ("dogs", "animals"), 2: ("cats", "animals")})
    return sae_id


@pytest.mark.parametrize("component", list(Component), ids=lambda c: c.value)
def test_left_out_component_is_stated_empty_and_still_validates(
    stack: Stack, labelled: str, tokens: tpb.TokenSource, component: Component, tmp_path: Path
) -> None:
    config = export_config(tokens, formats=[epb.EXPORT_FORMAT_NEURONPEDIA])
    config.dashboard.omitted_components.append(COMPONENT_TO_PB[component])
    last, archive = export(stack, labelled, config, f"omit-{component.value}")
    stages = [s.stage for s in last.progress.stages]
    if component in STAGE_OF:
        assert STAGE_OF[component] not in stages
    assert ppb.STAGE_ACTIVATION_PASS in stages
    assert last.result.validation.valid
    files = validated_files(archive, tmp_path)
    shown = feature(files, 1)
    for name in EMPTY_FIELDS[component]:
        assert not shown.get(name), name
    if component is Component.ACTIVATION_HISTOGRAM:
        assert not shown["histogram"].get("bin_edges")
    if component is Component.LOGIT_LENS:
        assert shown["logits"] == {"top_positive": [], "top_negative": []}
    if component is Component.EXPLANATIONS:
        assert not json.loads(files.read("explanations/explanations.json"))["features"]
    assert LEFT_OUT[component] in files.read("README.md").decode()


def test_leaving_out_every_example_is_refused_for_neuronpedia(
    stack: Stack, sae_id: str, tokens: tpb.TokenSource
) -> None:
    config = export_config(tokens)
    config.dashboard.omitted_components.extend(
        [dpb.DASHBOARD_COMPONENT_TOP_EXAMPLES, dpb.DASHBOARD_COMPONENT_QUANTILE_EXAMPLES]
    )
    with pytest.raises(grpc.RpcError) as err:
        stack.exports.ValidateExport(epb.ValidateExportRequest(sae_id=sae_id, config=config))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "config.dashboard.omitted_components" in str(details(err.value))


def test_presets_are_listed_with_estimates_that_grow_with_them(
    stack: Stack, sae_id: str, tokens: tpb.TokenSource
) -> None:
    request = epb.ListPresetsRequest(sae_id=sae_id, config=export_config(tokens))
    listed = {p.name: p for p in stack.exports.ListPresets(request).presets}
    assert list(listed) == list(PRESETS) == ["quick", "neuronpedia", "complete"]
    sizes = [listed[name].estimate.estimated_size_bytes for name in PRESETS]
    assert 0 < sizes[0] < sizes[1] < sizes[2]
    assert all(
        p.estimate.feature_count == 32 and p.title and p.description for p in listed.values()
    )
    assert listed["quick"].max_tokens == 65_536
    bare = stack.exports.ListPresets(epb.ListPresetsRequest()).presets
    assert [p.name for p in bare] == list(PRESETS) and not bare[0].HasField("estimate")


@pytest.mark.parametrize(
    "preset", ["quick", "neuronpedia", pytest.param("complete", marks=pytest.mark.slow)]
)
def test_each_preset_exports_and_validates(
    stack: Stack, sae_id: str, tokens: tpb.TokenSource, preset: str, tmp_path: Path
) -> None:
    config = export_config(tokens, formats=[epb.EXPORT_FORMAT_NEURONPEDIA], preset=preset)
    last, archive = export(stack, sae_id, config, f"preset-{preset}")
    files = validated_files(archive, tmp_path)
    shown = feature(files, 1)
    expected = PRESETS[preset].dashboard
    assert len(shown["activations"]) <= expected.n_top_examples
    if preset == "quick":
        assert not shown.get("quantile_groups")
        assert ppb.STAGE_LOADING_EXAMPLES in [s.stage for s in last.progress.stages]
    else:
        assert len(shown["quantile_groups"]) == expected.n_quantile_groups


def test_dashboard_computed_by_the_cli_is_a_cache_hit_for_contract_defaults(
    stack: Stack, sae_id: str, tokens: tpb.TokenSource
) -> None:
    args = build_parser().parse_args(
        ["run", sae_id, "--tokens", tokens.token_file, "--features", "3:4"]
    )
    cli_config = cli_export_config(args)
    cli_config.formats[:] = [epb.EXPORT_FORMAT_NEURONPEDIA]
    export(stack, sae_id, cli_config, "from-the-cli")
    request = epb.GetFeatureDashboardRequest(
        sae_id=sae_id,
        feature_index=3,
        params=dpb.DashboardParams(),
        tokens=tpb.TokenSource(token_file=tokens.token_file),
    )
    answer = stack.exports.GetFeatureDashboard(request)
    assert answer.from_cache and answer.dashboard.feature_index == 3


def test_cli_lists_the_presets_with_their_estimates(
    stack: Stack, sae_id: str, tokens: tpb.TokenSource, capsys: pytest.CaptureFixture[str]
) -> None:
    address = ["--export-address", stack.export.address]
    assert cli_main(["presets", *address, "--sae-id", sae_id, "--tokens", tokens.token_file]) == 0
    out = capsys.readouterr().out
    for preset in PRESETS.values():
        assert preset.name in out and preset.title in out
    assert out.count("estimate:") == len(PRESETS)
