"""The servicer's translation between the store's messages and the repository's plain records."""

from __future__ import annotations

from datetime import UTC, datetime

from mistudio.store.v1 import store_service_pb2 as pb
from mistudio_store import messages
from mistudio_store.records import Explanation, Feature, FeatureFilter, Sae

from tests.store.helpers import make_sae, sae_record


def test_an_sae_message_round_trips_through_its_record() -> None:
    sent = make_sae("round-trip", owner="alice")
    sent.created_at.FromDatetime(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    record = messages.sae_from_pb(sent)
    assert record.architecture == "topk"
    assert record.config == {"k": 8, "normalize_activations": "none"}
    assert record.created_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert record.updated_at is None
    assert messages.sae_to_pb(record) == sent


def test_an_architecture_the_contract_does_not_define_reads_as_unspecified() -> None:
    for value in (pb.ARCHITECTURE_UNSPECIFIED, 99):
        message = make_sae(architecture=value)
        assert messages.sae_from_pb(message).architecture == ""


def test_a_record_becomes_the_message_a_client_reads() -> None:
    record = sae_record("plain", architecture="jumprelu", config={})
    message = messages.sae_to_pb(record)
    assert message.architecture == pb.ARCHITECTURE_JUMPRELU
    assert message.HasField("config") and not message.HasField("created_at")
    assert isinstance(messages.sae_from_pb(message), Sae)


def test_an_explanation_keeps_an_unset_score_unset() -> None:
    unscored = messages.explanation_from_pb(pb.Explanation(feature_index=1, description="d"))
    assert unscored == Explanation(1, "d")
    assert not messages.explanation_to_pb(unscored).HasField("score")
    scored = messages.explanation_to_pb(Explanation(1, "d", score=0.0))
    assert scored.HasField("score") and scored.score == 0.0


def test_features_and_filters_carry_every_field() -> None:
    feature = pb.Feature(
        feature_index=3, label="l", category="c", activation_frequency=0.5, max_activation=2.0
    )
    assert messages.feature_from_pb(feature) == Feature(3, "l", "c", 0.5, 2.0)
    assert messages.feature_to_pb(messages.feature_from_pb(feature)) == feature
    found = pb.FeatureFilter(
        index_start=1, index_end=9, labeled_only=True, label_contains="x", category="c"
    )
    assert messages.feature_filter_from_pb(found) == FeatureFilter(1, 9, True, "x", "c")
