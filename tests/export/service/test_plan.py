"""Plans, selections and content hashes: the export's domain rules on plain values, without any
server or message."""

from __future__ import annotations

from dataclasses import replace

import pytest
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio_common.dashboard_codec import content_hash
from mistudio_common.errors import InvalidArgument
from mistudio_export import deflate
from mistudio_export.delta import feature_hash, render_key
from mistudio_export.options import ExportOptions, NamingRequest
from mistudio_export.packaging import Compression, ExportFormat
from mistudio_export.peers import FeatureFilter, FeatureRecord, SaeRecord
from mistudio_export.plan import build_plan
from mistudio_export.records import ExplanationRecord
from mistudio_export.selection import FeatureSelection, StatisticFilter, candidate_indices


def sae(**fields: object) -> SaeRecord:
    record = SaeRecord(
        sae_id="gpt2-l8",
        model_id="gpt2-small",
        hook_point="blocks.8.hook_resid_post",
        d_in=768,
        d_sae=16384,
        weights_uri="/weights",
        created_at="2025-01-15T10:30:00Z",
    )
    return replace(record, **fields)  # type: ignore[arg-type]


def test_defaults_export_both_formats_with_prd_dashboard_settings() -> None:
    plan = build_plan(sae(), ExportOptions(), "ana")
    assert plan.formats == {ExportFormat.NEURONPEDIA, ExportFormat.SAELENS}
    assert plan.params.n_top_examples == 20 and plan.params.logit_k == 10
    assert plan.params.histogram_bins == 50 and not plan.params.token_source_fingerprint
    assert plan.device == "auto"
    assert not plan.gzip_json and plan.zip_compression is Compression.STORED


def test_created_at_comes_from_the_sae_record_not_the_clock() -> None:
    assert build_plan(sae(), ExportOptions(), "ana").created_at == "2025-01-15T10:30:00Z"


def test_naming_defaults_follow_neuronpedia_conventions() -> None:
    naming = build_plan(sae(), ExportOptions(), "ana").naming
    assert naming.neuronpedia_id == "gpt2-small/8-mistudio-res-16k"
    assert naming.creator_name == "ana"
    given = NamingRequest(model_id="gpt2sm", source_set="res-jb")
    named = build_plan(sae(), ExportOptions(naming=given), "ana").naming
    assert named.neuronpedia_id == "gpt2sm/8-res-jb"


def test_saelens_only_export_skips_the_compute_stages() -> None:
    plan = build_plan(sae(), ExportOptions(formats=(ExportFormat.SAELENS,)), "ana")
    assert plan.stages == (
        ppb.STAGE_VALIDATING,
        ppb.STAGE_GENERATING_FILES,
        ppb.STAGE_VALIDATING_OUTPUT,
        ppb.STAGE_CREATING_ARCHIVE,
    )


def test_selection_intersects_base_set_and_label_filters() -> None:
    labeled = [FeatureRecord(feature_index=i, label="x") for i in (1, 5, 9, 40)]
    seen: list[FeatureFilter] = []

    def lister(feature_filter: FeatureFilter) -> list[FeatureRecord]:
        seen.append(feature_filter)
        return labeled

    listed = FeatureSelection(base=frozenset({9, 5, 3}), labeled_only=True)
    assert candidate_indices(listed, 64, lister) == [5, 9]
    assert (seen[0].index_start, seen[0].index_end) == (3, 10)
    assert candidate_indices(FeatureSelection(), 4, lister) == [0, 1, 2, 3]


@pytest.mark.parametrize(
    ("selection", "field"),
    [
        (FeatureSelection(base=range(5, 5)), "config.selection.range"),
        (FeatureSelection(base=range(0, 16385)), "config.selection.range"),
        (FeatureSelection(base=frozenset()), "config.selection.list.indices"),
        (FeatureSelection(base=frozenset({3, 16384})), "config.selection.list.indices"),
        (
            FeatureSelection(statistics=StatisticFilter(min_frequency=1.5)),
            "config.selection.min_frequency",
        ),
        (
            FeatureSelection(statistics=StatisticFilter(min_frequency=0.2, max_frequency=0.1)),
            "config.selection.max_frequency",
        ),
        (
            FeatureSelection(statistics=StatisticFilter(min_max_activation=float("nan"))),
            "config.selection.min_max_activation",
        ),
    ],
)
def test_a_selection_outside_the_sae_is_refused_naming_the_request_field(
    selection: FeatureSelection, field: str
) -> None:
    with pytest.raises(InvalidArgument) as err:
        build_plan(sae(), ExportOptions(selection=selection), "ana")
    assert err.value.field == field


def test_the_plan_keeps_the_archive_compression_asked_for() -> None:
    options = ExportOptions(gzip_json=True, zip_compression=Compression.DEFLATED)
    plan = build_plan(sae(), options, "ana")
    assert plan.gzip_json and plan.zip_compression is Compression.DEFLATED


def test_statistic_filter_keeps_features_inside_the_bounds() -> None:
    keep = StatisticFilter(min_frequency=0.01, max_frequency=0.1, min_max_activation=2.0)

    def dashboard(frequency: float, maximum: float) -> dpb.FeatureDashboard:
        stats = dpb.FeatureStatistics(activation_frequency=frequency, max_activation=maximum)
        return dpb.FeatureDashboard(statistics=stats)

    assert keep.keeps(dashboard(0.05, 3.0))
    assert not keep.keeps(dashboard(0.2, 3.0))
    assert not keep.keeps(dashboard(0.005, 3.0))
    assert not keep.keeps(dashboard(0.05, 1.0))
    assert StatisticFilter(min_frequency=0.01).keeps(dashboard(0.9, 0.1))


def test_feature_hash_changes_with_label_and_explanations_only() -> None:
    dashboard = dpb.FeatureDashboard(feature_index=3)
    record = FeatureRecord(feature_index=3, label="dogs")
    explanation = ExplanationRecord(3, "dog names", "", "", None, "", explanation_id="e1")
    base = feature_hash(content_hash(dashboard), record, [explanation])
    assert feature_hash(content_hash(dashboard), record, [explanation]) == base
    assert (
        feature_hash(
            content_hash(dashboard), FeatureRecord(feature_index=3, label="cats"), [explanation]
        )
        != base
    )
    assert feature_hash(content_hash(dashboard), record, []) != base
    other = dpb.FeatureDashboard(
        feature_index=3, statistics=dpb.FeatureStatistics(l0_contribution=1)
    )
    assert feature_hash(content_hash(other), record, [explanation]) != base


def test_render_key_of_gzipped_feature_files_names_the_deflater(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another deflater writes other gzip bytes, so an earlier archive's are not reused; plain
    JSON files do not depend on it."""
    plain = build_plan(sae(), ExportOptions(), "ana")
    gzipped = build_plan(sae(), ExportOptions(gzip_json=True), "ana")
    before = render_key(plain), render_key(gzipped)
    monkeypatch.setattr(deflate, "IDENTITY", "zlib 1.3 level 1")

    assert render_key(plain) == before[0]
    assert render_key(gzipped) != before[1]


def test_feature_hash_is_the_one_earlier_exports_recorded() -> None:
    """Delta exports compare with hashes stored by earlier versions: the bytes hashed are fixed."""
    dashboard = dpb.FeatureDashboard(
        feature_index=3, statistics=dpb.FeatureStatistics(l0_contribution=1)
    )
    record = FeatureRecord(feature_index=3, label="dogs", category="animals")
    scored = ExplanationRecord(
        3, "dog names", "np_max-act-logits", "gpt-4o-mini", 0.75, "", explanation_id="e1"
    )
    human = ExplanationRecord(3, "pets", "human", "", None, "", explanation_id="e2")
    assert feature_hash(content_hash(dashboard), record, [scored, human]) == (
        "b68fa05ff1727635c6568f27c28390136eb5452f9d6421f8657ad983a8f0c1bd"
    )
