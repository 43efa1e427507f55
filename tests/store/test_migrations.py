"""The schema migrations: up and down on both backends, and in step with the ORM models."""

from __future__ import annotations

from datetime import UTC, datetime

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from google.protobuf import json_format
from mistudio.common.v1 import dashboard_pb2 as dpb
from mistudio_common.dashboard_codec import content_hash, dashboard_bytes
from mistudio_store import convert
from mistudio_store.db import migrate
from mistudio_store.db.engine import create_store_engine
from mistudio_store.db.models import Base, DashboardRow, ExportFeatureHashRow, ExportJobRow
from sqlalchemy import Connection, MetaData, Table, inspect, select
from sqlalchemy.orm import Session

from tests.store.helpers import make_dashboard

STORE_TABLES = {
    "saes",
    "features",
    "explanations",
    "dashboards",
    "export_jobs",
    "export_feature_hashes",
}


def test_upgrade_creates_every_table_and_downgrade_removes_them(empty_database_url: str) -> None:
    engine = create_store_engine(empty_database_url)
    try:
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == migrate.head_revision(engine)
        assert set(inspect(engine).get_table_names()) >= STORE_TABLES

        migrate.downgrade(engine, "base")
        assert migrate.current_revision(engine) is None
        assert not STORE_TABLES & set(inspect(engine).get_table_names())

        migrate.upgrade(engine)  # and back up again
        assert set(inspect(engine).get_table_names()) >= STORE_TABLES
    finally:
        engine.dispose()


def test_upgrading_a_migrated_database_changes_nothing(database_url: str) -> None:
    engine = create_store_engine(database_url)
    try:
        head = migrate.current_revision(engine)
        migrate.upgrade(engine)
        assert migrate.current_revision(engine) == head == migrate.head_revision(engine)
    finally:
        engine.dispose()


def test_models_match_the_migrated_schema(database_url: str) -> None:
    """Autogenerate finds nothing to do: the migrations describe exactly the ORM models."""
    engine = create_store_engine(database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_migrating_untyped_job_state_keeps_config_resume_state_result_and_hashes(
    empty_database_url: str,
) -> None:
    engine = create_store_engine(empty_database_url)
    old = {
        "compute": {"attempt": 2, "paused_job": "c1"},
        "collect": {"chunks_done": 3, "skipped_unchanged": 1},
        "formats_done": ["prd_json"],
        "result": {"output_uri": "exports/j/x.zip", "size_bytes": 9},
        "feature_hashes": {"4": "ab"},
        "render_key": "rk",
    }
    try:
        migrate.upgrade(engine, "0001")
        now = datetime.now(UTC)
        with engine.begin() as connection:
            sae_pk = _insert_sae(connection, now)
            jobs = Table("export_jobs", MetaData(), autoload_with=connection)
            config = {"batch_size": 8.0, "dashboard": {"n_top_examples": 20.0}, "device": None}
            job = dict(job_id="j", sae_pk=sae_pk, owner="o", config=config, state="running")
            job.update(stage="caching", output_uri="", output_size_bytes=0, feature_count=0)
            job.update(error_message="", checkpoint=old, created_at=now, updated_at=now)
            connection.execute(jobs.insert().values(**job))
        migrate.upgrade(engine)
        with Session(engine) as session:
            row = session.get(ExportJobRow, "j")
            assert row is not None
            job = convert.job_to_pb(row, "s", "")
        assert job.config.batch_size == 8 and job.config.dashboard.n_top_examples == 20
        assert row.config == {"batch_size": 8, "dashboard": {"n_top_examples": 20}}
        assert job.resume.compute.attempt == 2
        assert job.resume.compute.computation_id == "c1"
        assert job.resume.collect.chunks_done == 3
        assert list(job.resume.formats.done) == ["prd_json"]
        assert job.outcome.result.output_uri == "exports/j/x.zip"
        assert job.outcome.feature_hash_count == 1 and job.outcome.render_key == "rk"
        with Session(engine) as session:
            moved = session.execute(
                select(ExportFeatureHashRow.feature_index, ExportFeatureHashRow.content_hash)
            ).all()
        assert [tuple(r) for r in moved] == [(4, "ab")]
    finally:
        engine.dispose()


JSON_ERA = "0006"
"""The last revision that kept cached dashboards as JSON."""
DASHBOARD_ROW = dict(params_key="k" * 64, params={}, computation_version="v", content_hash="")


def test_json_dashboards_become_their_wire_bytes_with_the_same_hash_and_go_back(
    empty_database_url: str,
) -> None:
    complete = make_dashboard(4)
    own_form = {  # how the store wrote JSON: proto field names, enum names, float32 widened
        "feature_index": 5,
        "top_tokens_metric": "TOKEN_RANK_METRIC_MEAN",
        "statistics": {"mean_activation": -1.5, "token_count": 40},
        "top_examples": [{"values": [0.0, float(dpb.QuantileGroup(bin_min=0.1).bin_min)]}],
    }
    expected = {
        4: complete,
        5: dpb.FeatureDashboard(
            feature_index=5,
            top_tokens_metric=dpb.TOKEN_RANK_METRIC_MEAN,
            statistics=dpb.FeatureStatistics(mean_activation=-1.5, token_count=40),
            top_examples=[dpb.ActivationExample(values=[0.0, 0.1])],
        ),
    }
    documents = {4: json_format.MessageToDict(complete), 5: own_form}  # and json_format's form
    engine = create_store_engine(empty_database_url)
    try:
        migrate.upgrade(engine, JSON_ERA)
        now = datetime.now(UTC)
        with engine.begin() as connection:
            sae_pk = _insert_sae(connection, now, d_sae=8)
            dashboards = Table("dashboards", MetaData(), autoload_with=connection)
            for index, document in documents.items():
                row = dict(DASHBOARD_ROW, content_hash=content_hash(expected[index]))
                connection.execute(
                    dashboards.insert().values(
                        **row, sae_pk=sae_pk, feature_index=index, data=document, updated_at=now
                    )
                )

        migrate.upgrade(engine)
        with Session(engine) as session:
            rows = session.scalars(select(DashboardRow).order_by(DashboardRow.feature_index))
            stored = {r.feature_index: (r.data, r.content_hash) for r in rows}
        wanted = {i: (dashboard_bytes(d), content_hash(d)) for i, d in expected.items()}
        assert stored == wanted  # each row's deterministic wire bytes, with the hash it had

        migrate.downgrade(engine, JSON_ERA)
        with engine.connect() as connection:
            dashboards = Table("dashboards", MetaData(), autoload_with=connection)
            query = select(dashboards.c.feature_index, dashboards.c.data, dashboards.c.content_hash)
            back = {
                i: (dashboard_bytes(json_format.ParseDict(data, dpb.FeatureDashboard())), h)
                for i, data, h in connection.execute(query)
            }
        assert back == wanted
    finally:
        engine.dispose()


def _insert_sae(connection: Connection, now: datetime, d_sae: int = 1) -> int:
    saes = Table("saes", MetaData(), autoload_with=connection)
    sae = dict(sae_id="s", model_id="m", hook_point="h", d_in=1, d_sae=d_sae)
    sae.update(architecture="standard", weights_uri="", training_dataset="")
    sae.update(n_training_tokens=0, l0=0.0, explained_variance=0.0, config={})
    sae.update(neuronpedia_model_id="", neuronpedia_source_set="")
    connection.execute(saes.insert().values(**sae, created_at=now, updated_at=now))
    return int(connection.execute(select(saes.c.id)).scalar_one())
