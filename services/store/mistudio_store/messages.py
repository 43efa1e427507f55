"""Translation between the store's messages and its plain values (``records``): the only place
the servicer turns one into the other, so the repository and its checks never see a request."""

from __future__ import annotations

from mistudio.store.v1 import store_service_pb2 as pb
from mistudio_common.architectures import enum_name, saelens_name

from mistudio_store.convert import from_timestamp, struct, timestamp, to_json
from mistudio_store.records import (
    Explanation,
    Feature,
    FeatureFilter,
    FeatureHash,
    Sae,
    SerializedDashboard,
)


def sae_from_pb(m: pb.Sae) -> Sae:
    """An architecture value the contract does not define reads as unspecified ("")."""
    known = m.architecture in pb.Architecture.values()
    return Sae(
        sae_id=m.sae_id,
        model_id=m.model_id,
        hook_point=m.hook_point,
        d_in=m.d_in,
        d_sae=m.d_sae,
        architecture=saelens_name(pb.Architecture.Name(m.architecture)) if known else "",
        weights_uri=m.weights_uri,
        training_dataset=m.training_dataset,
        n_training_tokens=m.n_training_tokens,
        l0=m.l0,
        explained_variance=m.explained_variance,
        neuronpedia_model_id=m.neuronpedia_model_id,
        neuronpedia_source_set=m.neuronpedia_source_set,
        config=to_json(m.config),
        owner=m.owner,
        created_at=from_timestamp(m, "created_at"),
        updated_at=from_timestamp(m, "updated_at"),
    )


def sae_to_pb(s: Sae) -> pb.Sae:
    return pb.Sae(
        sae_id=s.sae_id,
        model_id=s.model_id,
        hook_point=s.hook_point,
        d_in=s.d_in,
        d_sae=s.d_sae,
        architecture=pb.Architecture.Value(enum_name(s.architecture)),
        weights_uri=s.weights_uri,
        training_dataset=s.training_dataset,
        n_training_tokens=s.n_training_tokens,
        l0=s.l0,
        explained_variance=s.explained_variance,
        neuronpedia_model_id=s.neuronpedia_model_id,
        neuronpedia_source_set=s.neuronpedia_source_set,
        config=struct(s.config),
        created_at=timestamp(s.created_at),
        updated_at=timestamp(s.updated_at),
        owner=s.owner,
    )


def feature_from_pb(m: pb.Feature) -> Feature:
    return Feature(
        feature_index=m.feature_index,
        label=m.label,
        category=m.category,
        activation_frequency=m.activation_frequency,
        max_activation=m.max_activation,
        updated_at=from_timestamp(m, "updated_at"),
    )


def feature_to_pb(f: Feature) -> pb.Feature:
    return pb.Feature(
        feature_index=f.feature_index,
        label=f.label,
        category=f.category,
        activation_frequency=f.activation_frequency,
        max_activation=f.max_activation,
        updated_at=timestamp(f.updated_at),
    )


def feature_filter_from_pb(m: pb.FeatureFilter) -> FeatureFilter:
    return FeatureFilter(
        index_start=m.index_start,
        index_end=m.index_end,
        labeled_only=m.labeled_only,
        label_contains=m.label_contains,
        category=m.category,
    )


def explanation_from_pb(m: pb.Explanation) -> Explanation:
    return Explanation(
        feature_index=m.feature_index,
        description=m.description,
        method=m.method,
        explainer_model=m.explainer_model,
        score=m.score if m.HasField("score") else None,
        created_at=from_timestamp(m, "created_at"),
        explanation_id=m.explanation_id,
    )


def explanation_to_pb(e: Explanation) -> pb.Explanation:
    return pb.Explanation(
        explanation_id=e.explanation_id,
        feature_index=e.feature_index,
        description=e.description,
        method=e.method,
        explainer_model=e.explainer_model,
        score=e.score,  # None leaves the optional field unset
        created_at=timestamp(e.created_at),
    )


def feature_hash_from_pb(m: pb.FeatureHash) -> FeatureHash:
    return FeatureHash(feature_index=m.feature_index, content_hash=m.content_hash)


def feature_hash_to_pb(h: FeatureHash) -> pb.FeatureHash:
    return pb.FeatureHash(feature_index=h.feature_index, content_hash=h.content_hash)


def cached_dashboard_to_pb(h: FeatureHash) -> pb.CachedDashboard:
    return pb.CachedDashboard(feature_index=h.feature_index, content_hash=h.content_hash)


def serialized_dashboard_from_pb(m: pb.SerializedDashboard) -> SerializedDashboard:
    return SerializedDashboard(feature_index=m.feature_index, data=m.data)


def serialized_dashboard_to_pb(d: SerializedDashboard) -> pb.SerializedDashboard:
    return pb.SerializedDashboard(feature_index=d.feature_index, data=d.data)
