"""Plans, selections and content hashes: the export's domain rules, without any server."""

from __future__ import annotations

from dataclasses import replace

from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio_export.delta import feature_hash
from mistudio_export.peers import FeatureFilter, FeatureRecord, SaeRecord
from mistudio_export.plan import NEURONPEDIA, SAELENS, build_plan, feature_selection
from mistudio_export.records import ExplanationRecord
from mistudio_export.selection import StatisticFilter, candidate_indices


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
    plan = build_plan(sae(), epb.ExportConfig(), "ana")
    assert plan.formats == {NEURONPEDIA, SAELENS}
    assert plan.params.n_top_examples == 20 and plan.params.logit_k == 10
    assert plan.params.histogram_bins == 50 and not plan.params.token_source_fingerprint
    assert plan.device == "auto"


def test_created_at_comes_from_the_sae_record_not_the_clock() -> None:
    assert build_plan(sae(), epb.ExportConfig(), "ana").created_at == "2025-01-15T10:30:00Z"


def test_naming_defaults_follow_neuronpedia_conventions() -> None:
    naming = build_plan(sae(), epb.ExportConfig(), "ana").naming
    assert naming.neuronpedia_id == "gpt2-small/8-mistudio-res-16k"
    assert naming.creator_name == "ana"
    given = epb.NeuronpediaNaming(model_id="gpt2sm", source_set="res-jb")
    named = build_plan(sae(), epb.ExportConfig(naming=given), "ana").naming
    assert named.neuronpedia_id == "gpt2sm/8-res-jb"


def test_saelens_only_export_skips_the_compute_stages() -> None:
    plan = build_plan(sae(), epb.ExportConfig(formats=[SAELENS]), "ana")
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

    request = epb.FeatureSelection(list=epb.FeatureList(indices=[9, 5, 3]), labeled_only=True)
    assert candidate_indices(feature_selection(request), 64, lister) == [5, 9]
    assert (seen[0].index_start, seen[0].index_end) == (3, 10)
    assert candidate_indices(feature_selection(epb.FeatureSelection()), 4, lister) == [0, 1, 2, 3]


def test_the_requested_selection_becomes_a_plain_one() -> None:
    request = epb.FeatureSelection(
        range=epb.IndexRange(start=2, end=9), category="animals", min_frequency=0.01
    )
    selection = feature_selection(request)
    assert selection.base == range(2, 9)
    assert selection.label_filtered and selection.category == "animals"
    assert selection.statistics == StatisticFilter(min_frequency=0.01)
    listed = feature_selection(epb.FeatureSelection(list=epb.FeatureList(indices=[4, 4, 1])))
    assert listed.base == frozenset({1, 4}) and not listed.label_filtered


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
    base = feature_hash(dashboard, record, [explanation])
    assert feature_hash(dashboard, record, [explanation]) == base
    assert (
        feature_hash(dashboard, FeatureRecord(feature_index=3, label="cats"), [explanation]) != base
    )
    assert feature_hash(dashboard, record, []) != base
    other = dpb.FeatureDashboard(
        feature_index=3, statistics=dpb.FeatureStatistics(l0_contribution=1)
    )
    assert feature_hash(other, record, [explanation]) != base


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
    assert feature_hash(dashboard, record, [scored, human]) == (
        "b68fa05ff1727635c6568f27c28390136eb5452f9d6421f8657ad983a8f0c1bd"
    )
