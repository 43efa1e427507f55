"""Features and explanations over gRPC: batched upserts, filters, pages, several explanations."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import timestamp_pb2
from mistudio.store.v1 import store_service_pb2 as pb
from mistudio.store.v1.store_service_pb2_grpc import StoreServiceStub

from tests.store.helpers import bad_request_fields, make_sae, resource_info


@pytest.fixture
def sae_id(stub: StoreServiceStub) -> str:
    stub.CreateSae(pb.CreateSaeRequest(sae=make_sae("feat", d_sae=64)))
    return "feat"


def _all_features(stub: StoreServiceStub, request: pb.ListFeaturesRequest) -> list[pb.Feature]:
    features: list[pb.Feature] = []
    while True:
        page = stub.ListFeatures(request)
        features += page.features
        if not page.next_page_token:
            return features
        request.page_token = page.next_page_token


def test_upsert_writes_only_the_listed_features(stub: StoreServiceStub, sae_id: str) -> None:
    first = [
        pb.Feature(feature_index=i, label=f"f{i}", activation_frequency=0.01) for i in range(6)
    ]
    assert (
        stub.UpsertFeatures(pb.UpsertFeaturesRequest(sae_id=sae_id, features=first)).upserted_count
        == 6
    )
    before = {
        f.feature_index: f for f in _all_features(stub, pb.ListFeaturesRequest(sae_id=sae_id))
    }

    update = [
        pb.Feature(feature_index=2, label="dog names", category="animals", max_activation=3.5)
    ]
    stub.UpsertFeatures(pb.UpsertFeaturesRequest(sae_id=sae_id, features=update))

    after = {f.feature_index: f for f in _all_features(stub, pb.ListFeaturesRequest(sae_id=sae_id))}
    assert (after[2].label, after[2].category, after[2].max_activation) == (
        "dog names",
        "animals",
        3.5,
    )
    assert after[2].updated_at.ToDatetime() >= before[2].updated_at.ToDatetime()
    assert {i: after[i] for i in after if i != 2} == {i: before[i] for i in before if i != 2}


def test_list_features_pages_in_index_order(stub: StoreServiceStub, sae_id: str) -> None:
    features = [pb.Feature(feature_index=i) for i in (9, 3, 40, 0, 17)]
    stub.UpsertFeatures(pb.UpsertFeaturesRequest(sae_id=sae_id, features=features))
    listed = _all_features(stub, pb.ListFeaturesRequest(sae_id=sae_id, page_size=2))
    assert [f.feature_index for f in listed] == [0, 3, 9, 17, 40]


def test_feature_filters_all_apply(stub: StoreServiceStub, sae_id: str) -> None:
    features = [
        pb.Feature(feature_index=1, label="Dog names", category="animals"),
        pb.Feature(feature_index=2, label="hot dogs", category="food"),
        pb.Feature(feature_index=3, label="", category="animals"),
        pb.Feature(feature_index=4, label="DOG breeds", category="animals"),
        pb.Feature(feature_index=5, label="100% sure", category="misc"),
    ]
    stub.UpsertFeatures(pb.UpsertFeaturesRequest(sae_id=sae_id, features=features))

    def indices(**filters: object) -> list[int]:
        request = pb.ListFeaturesRequest(sae_id=sae_id, filter=pb.FeatureFilter(**filters))  # type: ignore[arg-type]
        return [f.feature_index for f in _all_features(stub, request)]

    assert indices(label_contains="dog") == [1, 2, 4]
    assert indices(label_contains="dog", category="animals") == [1, 4]
    assert indices(labeled_only=True, index_start=2, index_end=5) == [2, 4]
    assert indices(category="animals", labeled_only=False) == [1, 3, 4]
    assert indices(label_contains="%") == [5]  # LIKE wildcards are matched literally


def test_feature_index_outside_the_sae_is_invalid_argument(
    stub: StoreServiceStub, sae_id: str
) -> None:
    features = [pb.Feature(feature_index=0), pb.Feature(feature_index=64)]
    with pytest.raises(grpc.RpcError) as caught:
        stub.UpsertFeatures(pb.UpsertFeaturesRequest(sae_id=sae_id, features=features))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert bad_request_fields(caught.value) == ["features[1].feature_index"]
    assert "0..63" in str(caught.value.details())


def test_repeated_feature_in_one_batch_is_invalid_argument(
    stub: StoreServiceStub, sae_id: str
) -> None:
    features = [pb.Feature(feature_index=5), pb.Feature(feature_index=5)]
    with pytest.raises(grpc.RpcError) as caught:
        stub.UpsertFeatures(pb.UpsertFeaturesRequest(sae_id=sae_id, features=features))
    assert bad_request_fields(caught.value) == ["features[1].feature_index"]


def test_activation_frequency_above_one_is_invalid_argument(
    stub: StoreServiceStub, sae_id: str
) -> None:
    features = [pb.Feature(feature_index=5, activation_frequency=1.5)]
    with pytest.raises(grpc.RpcError) as caught:
        stub.UpsertFeatures(pb.UpsertFeaturesRequest(sae_id=sae_id, features=features))
    assert bad_request_fields(caught.value) == ["features[0].activation_frequency"]


def test_inverted_index_range_is_invalid_argument(stub: StoreServiceStub, sae_id: str) -> None:
    request = pb.ListFeaturesRequest(
        sae_id=sae_id, filter=pb.FeatureFilter(index_start=5, index_end=5)
    )
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListFeatures(request)
    assert bad_request_fields(caught.value) == ["filter.index_end"]


def test_page_token_from_other_filters_is_rejected(stub: StoreServiceStub, sae_id: str) -> None:
    stub.UpsertFeatures(
        pb.UpsertFeaturesRequest(
            sae_id=sae_id, features=[pb.Feature(feature_index=i) for i in range(3)]
        )
    )
    token = stub.ListFeatures(pb.ListFeaturesRequest(sae_id=sae_id, page_size=1)).next_page_token
    assert token
    with pytest.raises(grpc.RpcError) as caught:
        stub.ListFeatures(
            pb.ListFeaturesRequest(
                sae_id=sae_id, page_size=1, page_token=token, filter=pb.FeatureFilter(category="x")
            )
        )
    assert bad_request_fields(caught.value) == ["page_token"]


def test_features_of_an_unknown_sae_are_not_found(stub: StoreServiceStub) -> None:
    for call in (
        lambda: stub.UpsertFeatures(pb.UpsertFeaturesRequest(sae_id="ghost")),
        lambda: stub.ListFeatures(pb.ListFeaturesRequest(sae_id="ghost")),
        lambda: stub.AddExplanations(pb.AddExplanationsRequest(sae_id="ghost")),
        lambda: stub.ListExplanations(pb.ListExplanationsRequest(sae_id="ghost")),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert resource_info(caught.value).resource_name == "ghost"


def test_several_explanations_per_feature_are_kept_in_order(
    stub: StoreServiceStub, sae_id: str
) -> None:
    first = stub.AddExplanations(
        pb.AddExplanationsRequest(
            sae_id=sae_id,
            explanations=[
                pb.Explanation(
                    feature_index=7,
                    description="dogs",
                    method="oai_token-act-pair",
                    explainer_model="gpt-4o-mini",
                    score=0.8,
                ),
                pb.Explanation(feature_index=2, description="cats", method="human"),
            ],
        )
    ).explanations
    assert all(e.explanation_id for e in first) and len({e.explanation_id for e in first}) == 2
    stub.AddExplanations(
        pb.AddExplanationsRequest(
            sae_id=sae_id, explanations=[pb.Explanation(feature_index=7, description="puppies")]
        )
    )
    listed: list[pb.Explanation] = []
    request = pb.ListExplanationsRequest(sae_id=sae_id, page_size=1)
    while True:
        page = stub.ListExplanations(request)
        listed += page.explanations
        if not page.next_page_token:
            break
        request.page_token = page.next_page_token
    assert [(e.feature_index, e.description) for e in listed] == [
        (2, "cats"),
        (7, "dogs"),
        (7, "puppies"),
    ]
    assert listed[1] == first[0]
    only_seven = stub.ListExplanations(
        pb.ListExplanationsRequest(sae_id=sae_id, feature_indices=[7])
    )
    assert [e.description for e in only_seven.explanations] == ["dogs", "puppies"]


def test_empty_explanation_is_invalid_argument(stub: StoreServiceStub, sae_id: str) -> None:
    explanations = [
        pb.Explanation(feature_index=1, description="ok"),
        pb.Explanation(feature_index=1),
    ]
    with pytest.raises(grpc.RpcError) as caught:
        stub.AddExplanations(pb.AddExplanationsRequest(sae_id=sae_id, explanations=explanations))
    assert bad_request_fields(caught.value) == ["explanations[1].description"]
    assert not stub.ListExplanations(pb.ListExplanationsRequest(sae_id=sae_id)).explanations


def test_explanation_without_a_score_stays_unscored_and_keeps_its_date(
    stub: StoreServiceStub, sae_id: str
) -> None:
    written = timestamp_pb2.Timestamp(seconds=1_736_937_000)  # 2025-01-15T10:30:00Z
    stub.AddExplanations(
        pb.AddExplanationsRequest(
            sae_id=sae_id,
            explanations=[
                pb.Explanation(feature_index=3, description="dogs", created_at=written),
                pb.Explanation(feature_index=4, description="cats", score=0.0),
            ],
        )
    )
    dogs, cats = stub.ListExplanations(pb.ListExplanationsRequest(sae_id=sae_id)).explanations
    assert not dogs.HasField("score") and dogs.created_at == written
    assert cats.HasField("score") and cats.score == 0.0


def test_explanations_given_again_are_updated_not_repeated(
    stub: StoreServiceStub, sae_id: str
) -> None:
    def add(*explanations: pb.Explanation) -> None:
        stub.AddExplanations(pb.AddExplanationsRequest(sae_id=sae_id, explanations=explanations))

    add(pb.Explanation(feature_index=3, description="dogs", method="np_max-act", score=0.5))
    add(
        pb.Explanation(feature_index=3, description="dogs", method="np_max-act", score=0.75),
        pb.Explanation(feature_index=3, description="dogs and cats", method="np_max-act"),
    )
    listed = stub.ListExplanations(pb.ListExplanationsRequest(sae_id=sae_id)).explanations
    assert sorted((e.description, e.score) for e in listed) == [
        ("dogs", 0.75), ("dogs and cats", 0.0)
    ]  # fmt: skip


def test_a_bad_index_stores_none_of_the_batch(stub: StoreServiceStub, sae_id: str) -> None:
    explanations = [
        pb.Explanation(feature_index=1, description="ok"),
        pb.Explanation(feature_index=64, description="out of range"),
    ]
    with pytest.raises(grpc.RpcError) as caught:
        stub.AddExplanations(pb.AddExplanationsRequest(sae_id=sae_id, explanations=explanations))
    assert bad_request_fields(caught.value) == ["explanations[1].feature_index"]
    assert not stub.ListExplanations(pb.ListExplanationsRequest(sae_id=sae_id)).explanations


def test_upsert_with_update_mask_keeps_the_unmasked_fields(
    stub: StoreServiceStub, sae_id: str
) -> None:
    labeled = [pb.Feature(feature_index=i, label=f"f{i}", category="c") for i in range(3)]
    stub.UpsertFeatures(pb.UpsertFeaturesRequest(sae_id=sae_id, features=labeled))
    stats = [
        pb.Feature(feature_index=i, activation_frequency=0.5, max_activation=2.0) for i in (1, 2, 7)
    ]
    mask = ["activation_frequency", "max_activation"]
    stub.UpsertFeatures(pb.UpsertFeaturesRequest(sae_id=sae_id, features=stats, update_mask=mask))
    got = {f.feature_index: f for f in _all_features(stub, pb.ListFeaturesRequest(sae_id=sae_id))}
    assert [(got[i].label, got[i].category) for i in (0, 1, 2, 7)] == [
        ("f0", "c"), ("f1", "c"), ("f2", "c"), ("", "")
    ]  # fmt: skip
    assert [got[i].activation_frequency for i in (0, 1, 2, 7)] == [0.0, 0.5, 0.5, 0.5]
    assert got[1].max_activation == 2.0


def test_upsert_with_an_unknown_mask_field_is_invalid(stub: StoreServiceStub, sae_id: str) -> None:
    request = pb.UpsertFeaturesRequest(
        sae_id=sae_id, features=[pb.Feature(feature_index=0)], update_mask=["labels"]
    )
    with pytest.raises(grpc.RpcError) as failed:
        stub.UpsertFeatures(request)
    assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
    assert bad_request_fields(failed.value) == ["update_mask"]
