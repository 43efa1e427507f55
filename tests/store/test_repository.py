"""The repository on its own, without gRPC, on plain records: what the servicer relies on."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.store.v1 import store_service_pb2 as pb
from mistudio_common.errors import AlreadyExists, InvalidArgument, NotFound
from mistudio_store.db.models import DashboardRow
from mistudio_store.records import Explanation, Feature, FeatureFilter, FeatureHash
from mistudio_store.repository import StoreRepository
from mistudio_store.server import build_repository
from sqlalchemy import select

from tests.store.conftest import settings_for
from tests.store.helpers import sae_record, small_dashboard, stored


@pytest.fixture
def repo(database_url: str) -> Iterator[StoreRepository]:
    repository = build_repository(settings_for(database_url, max_page_size=50))
    yield repository
    repository.close()


def test_repository_round_trips_an_sae_and_raises_domain_errors(repo: StoreRepository) -> None:
    created = repo.create_sae(sae_record("unit"))
    assert repo.get_sae("unit") == created
    with pytest.raises(AlreadyExists) as duplicate:
        repo.create_sae(sae_record("unit"))
    assert duplicate.value.field == "sae.sae_id"
    with pytest.raises(NotFound) as missing:
        repo.get_sae("nope")
    assert (missing.value.resource_type, missing.value.resource_name) == (
        "mistudio.store.v1.Sae",
        "nope",
    )
    with pytest.raises(InvalidArgument) as malformed:
        repo.get_sae("Not An Id")
    assert malformed.value.field == "sae_id"


def test_an_sae_reads_back_as_given_with_the_stores_times(repo: StoreRepository) -> None:
    given = sae_record("plain", owner="alice", l0=7.5)
    created = repo.create_sae(given)
    assert created.created_at is not None and created.updated_at == created.created_at
    assert replace(created, created_at=None, updated_at=None) == given


def test_an_unspecified_architecture_is_refused_naming_the_field(repo: StoreRepository) -> None:
    with pytest.raises(InvalidArgument) as caught:
        repo.create_sae(sae_record("no-arch", architecture=""))
    assert caught.value.field == "sae.architecture"


def test_listed_features_match_every_filter_field(repo: StoreRepository) -> None:
    repo.create_sae(sae_record("filtered", d_sae=8))
    features = [
        Feature(1, label="a dog", category="animal"),
        Feature(2, label="the Dog park", category="place"),
        Feature(3, label="dogma", category="animal"),
        Feature(5, label="", category="animal"),
    ]
    repo.upsert_features("filtered", features)

    def listed(f: FeatureFilter) -> list[int]:
        return [x.feature_index for x in repo.list_features("filtered", feature_filter=f).items]

    assert listed(FeatureFilter()) == [1, 2, 3, 5]
    assert listed(FeatureFilter(index_start=2, index_end=5)) == [2, 3]
    assert listed(FeatureFilter(labeled_only=True, category="animal")) == [1, 3]
    assert listed(FeatureFilter(label_contains="DOG")) == [1, 2, 3]


def test_an_update_mask_writes_only_the_named_fields_of_existing_features(
    repo: StoreRepository,
) -> None:
    repo.create_sae(sae_record("masked", d_sae=4))
    repo.upsert_features("masked", [Feature(0, label="old", category="c", max_activation=1.0)])
    repo.upsert_features("masked", [Feature(0, label="new", max_activation=9.0)], ["label"])
    (stored,) = repo.list_features("masked").items
    assert (stored.label, stored.category, stored.max_activation) == ("new", "c", 1.0)
    with pytest.raises(InvalidArgument) as caught:
        repo.upsert_features("masked", [Feature(0)], ["labels"])
    assert caught.value.field == "update_mask"


def test_a_bad_feature_is_refused_by_its_position(repo: StoreRepository) -> None:
    repo.create_sae(sae_record("checked", d_sae=4))
    with pytest.raises(InvalidArgument) as caught:
        repo.upsert_features("checked", [Feature(0), Feature(1, activation_frequency=1.5)])
    assert caught.value.field == "features[1].activation_frequency"


def test_an_explanation_given_again_updates_its_score_instead_of_duplicating(
    repo: StoreRepository,
) -> None:
    repo.create_sae(sae_record("explained", d_sae=4))
    first = repo.add_explanations("explained", [Explanation(2, "dogs", method="m", score=0.5)])
    again = repo.add_explanations("explained", [Explanation(2, "dogs", method="m", score=None)])
    assert first[0].explanation_id == again[0].explanation_id != ""
    (stored,) = repo.list_explanations("explained").items
    assert stored.score is None and stored.created_at is not None
    with pytest.raises(InvalidArgument) as caught:
        repo.add_explanations("explained", [Explanation(1, "ok"), Explanation(1, " ")])
    assert caught.value.field == "explanations[1].description"


def test_feature_hashes_read_back_in_index_order(repo: StoreRepository) -> None:
    repo.create_sae(sae_record("hashed"))
    job, _ = repo.create_export_job(pb.ExportJob(sae_id="hashed"))
    hashes = [FeatureHash(i, f"{i:064x}") for i in (3, 1, 2)]
    assert repo.put_export_feature_hashes(job.job_id, hashes) == 3
    assert repo.list_export_feature_hashes(job.job_id).items == [hashes[1], hashes[2], hashes[0]]
    with pytest.raises(InvalidArgument) as caught:
        repo.put_export_feature_hashes(job.job_id, [FeatureHash(0, "not hex")])
    assert caught.value.field == "hashes[0].content_hash"


def test_list_pages_end_without_an_empty_page(repo: StoreRepository) -> None:
    for i in range(4):
        repo.create_sae(sae_record(f"s{i}"))
    first = repo.list_saes(page_size=2)
    second = repo.list_saes(page_size=2, page_token=first.next_page_token)
    assert [s.sae_id for s in first.items + second.items] == ["s0", "s1", "s2", "s3"]
    assert second.next_page_token == ""


def test_an_sae_id_is_unique_per_owner_and_everything_hangs_off_the_owners_own(
    repo: StoreRepository,
) -> None:
    for owner, d_sae in (("alice", 4), ("bob", 8)):
        repo.create_sae(sae_record("shared", owner=owner, d_sae=d_sae))
        repo.upsert_features("shared", [Feature(0, label=owner)], owner=owner)
    assert repo.get_sae("shared", "alice").d_sae == 4
    assert repo.get_sae("shared", "bob").d_sae == 8
    assert [f.label for f in repo.list_features("shared", owner="bob").items] == ["bob"]
    with pytest.raises(InvalidArgument) as ambiguous:
        repo.get_sae("shared")  # no owner: only when one owner has the id
    assert ambiguous.value.field == "owner"
    with pytest.raises(NotFound):
        repo.get_sae("shared", "carol")
    repo.delete_sae("shared", "alice")
    assert repo.get_sae("shared").owner == "bob"


def test_a_listing_of_every_owner_pages_through_shared_ids(repo: StoreRepository) -> None:
    for owner in ("alice", "bob", "carol"):
        repo.create_sae(sae_record("shared", owner=owner))
    first = repo.list_saes(page_size=2)
    second = repo.list_saes(page_size=2, page_token=first.next_page_token)
    assert [s.owner for s in first.items + second.items] == ["alice", "bob", "carol"]


def test_rewriting_a_range_leaves_other_rows_untouched(repo: StoreRepository) -> None:
    repo.create_sae(sae_record("inc", d_sae=8192))
    params = dpb.DashboardParams()
    repo.put_dashboards("inc", params, stored(*map(small_dashboard, range(4990, 6010))))
    before = _updated_at(repo)

    rewritten = [small_dashboard(i, 2.0) for i in range(5000, 6000)]
    repo.put_dashboards("inc", params, stored(*rewritten))
    # Rewriting with identical content is skipped too (the content hash did not change).
    repo.put_dashboards("inc", params, stored(small_dashboard(4990)))

    after = _updated_at(repo)
    changed = {i for i in after if after[i] != before[i]}
    assert changed == set(range(5000, 6000))


def _updated_at(repo: StoreRepository) -> dict[int, object]:
    with repo._sessions.read() as session:
        rows = session.execute(select(DashboardRow.feature_index, DashboardRow.updated_at))
        return dict(rows.all())


def test_concurrent_writers_neither_fail_nor_lose_updates(repo: StoreRepository) -> None:
    """SQLite included: write transactions take the lock up front instead of failing midway."""
    repo.create_sae(sae_record("busy", d_sae=4096))
    job, _ = repo.create_export_job(pb.ExportJob(sae_id="busy"))

    def work(worker: int) -> None:
        for step in range(10):
            features = [Feature(worker * 100 + step, label=f"w{worker}")]
            repo.upsert_features("busy", features)
            progress = ppb.Progress(job_id=job.job_id, sequence=worker * 100 + step)
            repo.update_export_job(pb.ExportJob(job_id=job.job_id, progress=progress), ["progress"])

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(work, range(4)))

    assert len(repo.list_features("busy", page_size=50).items) == 40
    assert repo.get_export_job(job.job_id).progress.job_id == job.job_id
