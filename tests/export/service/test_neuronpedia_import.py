"""Neuronpedia's own import, rebuilt in PostgreSQL, takes every row of two SAEs' exports.

Two different SAEs, each registered in its own store (whose explanation ids both start at 1),
are exported through the real services; their ``neuronpedia-importer/`` files are loaded into
one database built from Neuronpedia's schema, as its admin import route loads them.
"""

from __future__ import annotations

import io
import json
import os
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mistudio.common.v1 import progress_pb2 as ppb
from mistudio.common.v1 import tokens_pb2 as tpb
from mistudio.export.v1 import export_service_pb2 as epb
from mistudio.store.v1 import store_service_pb2 as spb
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from tests.export.service.stack import (
    Stack,
    export_config,
    label_features,
    register_sae,
    run_to_end,
    start_stack,
    write_sae_folder,
)
from tests.reference import neuronpedia_db

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

PG_ADMIN_URL = os.environ.get(
    "MISTUDIO_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
LABELS = {1: ("dogs", "animals"), 3: ("happy", "emotions"), 4: ("cats", "animals")}
KEYS = {
    "SourceRelease": ("name",),
    "Model": ("id",),
    "SourceSet": ("modelId", "name"),
    "Source": ("modelId", "id"),
    "Neuron": ("modelId", "layer", "index"),
    "Activation": ("id",),
    "Explanation": ("id",),
}


@pytest.fixture(scope="module")
def neuronpedia() -> Iterator[Engine]:
    """A fresh database per run with Neuronpedia's tables and config rows."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"np_import_{uuid.uuid4().hex[:12]}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except OperationalError as error:
        admin.dispose()
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"PostgreSQL is unreachable at {PG_ADMIN_URL}: {error.orig}")
        pytest.skip(f"PostgreSQL is unreachable at {PG_ADMIN_URL}")
    engine = create_engine(make_url(PG_ADMIN_URL).set(database=name))
    with engine.begin() as conn:
        neuronpedia_db.create_schema(conn)
    yield engine
    engine.dispose()
    with admin.connect() as conn:
        conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.dispose()


@pytest.fixture(scope="module")
def second_stack(workdir: Path) -> Iterator[Stack]:
    running = start_stack(workdir / "second-store")
    yield running
    running.stop()


def export_importer_files(stack: Stack, sae_id: str, tokens: tpb.TokenSource, dest: Path) -> Path:
    """Runs a Neuronpedia export and returns its ``{modelId}/{sourceId}/`` importer folder."""
    label_features(stack, sae_id, LABELS)
    heuristic = spb.Explanation(feature_index=1, description="fires on ' dog'",
                                method="mistudio_top-tokens")  # fmt: skip
    stack.records.AddExplanations(
        spb.AddExplanationsRequest(sae_id=sae_id, explanations=[heuristic])
    )
    config = export_config(tokens, formats=[epb.EXPORT_FORMAT_NEURONPEDIA])
    request = epb.StartExportRequest(request_id=f"np-{sae_id}", sae_id=sae_id, config=config)
    last = run_to_end(stack.exports.StartExport(request))[-1]
    assert last.progress.state == ppb.JOB_STATE_SUCCEEDED, last.progress.error
    download = stack.exports.DownloadExport(epb.DownloadExportRequest(job_id=last.progress.job_id))
    zipfile.ZipFile(io.BytesIO(b"".join(m.chunk for m in download))).extractall(dest)
    (model_file,) = dest.rglob("neuronpedia-importer/*/*/model.jsonl")
    return model_file.parent


@pytest.fixture(scope="module")
def sources(
    stack: Stack, second_stack: Stack, tokens: tpb.TokenSource, workdir: Path
) -> list[Path]:
    first_id = register_sae(stack, "np-import-a", str(write_sae_folder(workdir / "sae-a"))).sae_id
    second_folder = write_sae_folder(workdir / "sae-b", seed=7)
    second_id = register_sae(
        second_stack, "np-import-b", str(second_folder), neuronpedia_source_set="mistudio-res-b"
    ).sae_id
    return [
        export_importer_files(stack, first_id, tokens, workdir / "archive-a"),
        export_importer_files(second_stack, second_id, tokens, workdir / "archive-b"),
    ]


@pytest.fixture(scope="module")
def imported(neuronpedia: Engine, sources: list[Path]) -> dict[str, list[dict[str, Any]]]:
    """Every row read from both exports' files, by table, after loading them into one database."""
    rows: dict[str, list[dict[str, Any]]] = {}
    with neuronpedia.begin() as conn:
        for source in sources:
            for table, read in neuronpedia_db.import_source(conn, source).items():
                rows.setdefault(table, []).extend(read)
    return rows


def stored_keys(conn: Connection, table: str) -> set[tuple[str, ...]]:
    columns = ", ".join(f'"{c}"::text' for c in KEYS[table])
    return {tuple(r) for r in conn.execute(text(f'SELECT {columns} FROM "{table}"'))}


def file_keys(rows: list[dict[str, Any]], table: str) -> set[tuple[str, ...]]:
    return {tuple(str(row[c]) for c in KEYS[table]) for row in rows}


def test_every_row_of_every_file_is_in_the_database(
    neuronpedia: Engine, imported: dict[str, list[dict[str, Any]]]
) -> None:
    assert set(imported) == set(KEYS)
    with neuronpedia.connect() as conn:
        for table, rows in imported.items():
            assert stored_keys(conn, table) == file_keys(rows, table), table
            if table in ("Neuron", "Activation", "Explanation"):
                assert len(file_keys(rows, table)) == len(rows), f"{table}: ids collide"


def test_both_saes_keep_their_explanations(
    neuronpedia: Engine, imported: dict[str, list[dict[str, Any]]]
) -> None:
    with neuronpedia.connect() as conn:
        found = conn.execute(
            text('SELECT layer, "typeName", "explanationModelName" FROM "Explanation"')
        ).all()
    assert len(found) == 2 * 2 * len(LABELS)  # per SAE: an explanation and a label per feature
    assert {layer for layer, _, _ in found} == {"2-mistudio-res-32", "2-mistudio-res-b"}
    assert {(t, m) for _, t, m in found} == {("oai_token-act-pair", "gpt-4o-mini"), (None, None)}


def test_explanations_neuronpedia_lacks_wait_in_their_own_folder(sources: list[Path]) -> None:
    for source in sources:
        (pending,) = (source / "explanations-pending").glob("*.jsonl.gz")
        rows = [json.loads(line) for line in neuronpedia_db.read_lines(pending)]
        assert [(r["typeName"], r["explanationModelName"]) for r in rows] == [
            ("mistudio_top-tokens", None)
        ]


def test_importing_again_changes_nothing(neuronpedia: Engine, sources: list[Path]) -> None:
    with neuronpedia.connect() as conn:
        before = {table: stored_keys(conn, table) for table in KEYS}
    with neuronpedia.begin() as conn:
        neuronpedia_db.import_source(conn, sources[0])
    with neuronpedia.connect() as conn:
        assert {table: stored_keys(conn, table) for table in KEYS} == before


def test_model_rows_carry_the_model_layer_count_and_the_hook(
    neuronpedia: Engine, imported: dict[str, list[dict[str, Any]]]
) -> None:
    with neuronpedia.connect() as conn:
        layers = conn.execute(text('SELECT layers FROM "Model"')).scalar_one()
        hooks = {r[0] for r in conn.execute(text('SELECT "hookName" FROM "Neuron"'))}
        dfa = set(conn.execute(text('SELECT "dfaMaxValue", "dfaTargetIndex" FROM "Activation"')))
    assert layers == 5  # stories260K has five blocks
    assert hooks == {"blocks.2.hook_resid_post"}
    assert dfa == {(0.0, -1)}
