"""Neuronpedia's tables its importer writes, and its importer's insert, rebuilt in PostgreSQL.

Written from hijohnnylin/neuronpedia at ebb8426f (2026-08-20), not from our exporter:
* the tables, from ``apps/webapp/prisma/schema.prisma`` as Prisma maps it to PostgreSQL (String
  TEXT, Float DOUBLE PRECISION, DateTime TIMESTAMP(3), scalar lists as nullable arrays, ``@id``
  primary keys, ``@@unique`` unique indexes, relations as foreign keys). Columns outside the ten
  tables' own facts are left out: ``Explanation.embedding`` (pgvector) and the foreign key
  ``ExplanationType.explainerModelSettingsId`` (a table the importer never writes);
* the config rows: the users ``prisma/seed.ts`` creates, and the explanation types and explainer
  models Neuronpedia's ``utils/neuronpedia-utils/.../batch-autointerp.py`` lists as valid (the
  bucket's ``v1/config/*.jsonl`` itself is not in the repository);
* the inserts, in the admin import route's order (``app/api/admin/import/route.ts``: release,
  model, source set, source, features, activations, explanations). Row files go through
  ``lib/db/import.ts`` ``importJsonlString``: the column list is the first line's keys that are
  table columns, typed from ``information_schema``, and the file goes in as one
  ``INSERT … SELECT … FROM jsonb_to_recordset($1) … ON CONFLICT DO NOTHING``. The four metadata
  files go through ``prisma.*.create({data: line})`` when the row is not there yet (that query
  could not type the ``Visibility`` enum: it names the type unquoted), which refuses keys that
  are not columns; here one insert of the line's own columns stands for it.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, text

SCHEMA = """
CREATE TYPE "Visibility" AS ENUM ('PUBLIC', 'UNLISTED', 'PRIVATE');

CREATE TABLE "User" (
    "id" TEXT NOT NULL PRIMARY KEY,
    "name" TEXT NOT NULL UNIQUE,
    "bio" TEXT DEFAULT '',
    "email" TEXT UNIQUE,
    "emailVerified" TIMESTAMP(3),
    "githubUsername" TEXT,
    "bot" BOOLEAN NOT NULL DEFAULT false,
    "image" TEXT,
    "admin" BOOLEAN NOT NULL DEFAULT false,
    "canTriggerExplanations" BOOLEAN NOT NULL DEFAULT false,
    "isProblemEditor" BOOLEAN NOT NULL DEFAULT false,
    "emailNewsletterNotification" BOOLEAN NOT NULL DEFAULT true,
    "emailUnsubscribeAll" BOOLEAN NOT NULL DEFAULT false,
    "emailUnsubscribeCode" TEXT NOT NULL UNIQUE,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE "Model" (
    "id" TEXT NOT NULL PRIMARY KEY,
    "displayNameShort" TEXT NOT NULL DEFAULT '',
    "displayName" TEXT NOT NULL DEFAULT '',
    "creatorId" TEXT NOT NULL REFERENCES "User"("id") ON DELETE CASCADE,
    "tlensId" TEXT,
    "openRouterId" TEXT,
    "dimension" INTEGER,
    "thinking" BOOLEAN NOT NULL DEFAULT false,
    "visibility" "Visibility" NOT NULL DEFAULT 'PRIVATE',
    "defaultSourceSetName" TEXT,
    "defaultSourceId" TEXT,
    "defaultGraphSourceSetName" TEXT,
    "inferenceEnabled" BOOLEAN NOT NULL DEFAULT false,
    "instruct" BOOLEAN NOT NULL DEFAULT false,
    "layers" INTEGER NOT NULL,
    "neuronsPerLayer" INTEGER NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "owner" TEXT NOT NULL,
    "updatedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "website" TEXT,
    UNIQUE ("defaultSourceSetName", "id"),
    UNIQUE ("defaultSourceId", "id"),
    UNIQUE ("defaultGraphSourceSetName", "id")
);

CREATE TABLE "SourceRelease" (
    "name" TEXT NOT NULL UNIQUE,
    "visibility" "Visibility" NOT NULL DEFAULT 'PRIVATE',
    "isNewUi" BOOLEAN NOT NULL DEFAULT false,
    "featured" BOOLEAN NOT NULL DEFAULT false,
    "description" TEXT NOT NULL,
    "descriptionShort" TEXT,
    "urls" TEXT[],
    "creatorEmail" TEXT,
    "creatorName" TEXT NOT NULL,
    "creatorNameShort" TEXT,
    "creatorId" TEXT NOT NULL REFERENCES "User"("id") ON DELETE CASCADE,
    "defaultSourceSetName" TEXT,
    "defaultSourceId" TEXT,
    "defaultUmapSourceIds" TEXT[] DEFAULT ARRAY[]::TEXT[],
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE "SourceSet" (
    "modelId" TEXT NOT NULL REFERENCES "Model"("id") ON DELETE CASCADE,
    "name" TEXT NOT NULL,
    "hasDashboards" BOOLEAN NOT NULL DEFAULT true,
    "allowInferenceSearch" BOOLEAN NOT NULL DEFAULT true,
    "visibility" "Visibility" NOT NULL DEFAULT 'PRIVATE',
    "description" TEXT NOT NULL,
    "type" TEXT NOT NULL DEFAULT '',
    "creatorName" TEXT NOT NULL,
    "creatorEmail" TEXT,
    "creatorId" TEXT NOT NULL REFERENCES "User"("id") ON DELETE CASCADE,
    "releaseName" TEXT REFERENCES "SourceRelease"("name") ON DELETE CASCADE,
    "urls" TEXT[],
    "hasGraphs" BOOLEAN NOT NULL DEFAULT false,
    "graphEnabled" BOOLEAN NOT NULL DEFAULT false,
    "similarityMatrixEnabled" BOOLEAN NOT NULL DEFAULT false,
    "defaultOfModelId" TEXT,
    "defaultGraphModelId" TEXT,
    "defaultRange" INTEGER NOT NULL DEFAULT 1,
    "defaultShowBreaks" BOOLEAN NOT NULL DEFAULT true,
    "showDfa" BOOLEAN NOT NULL DEFAULT false,
    "showCorrelated" BOOLEAN NOT NULL DEFAULT false,
    "showHeadAttribution" BOOLEAN NOT NULL DEFAULT false,
    "showUmap" BOOLEAN NOT NULL DEFAULT false,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    UNIQUE ("modelId", "name")
);

CREATE TABLE "Source" (
    "id" TEXT NOT NULL,
    "modelId" TEXT NOT NULL REFERENCES "Model"("id") ON DELETE CASCADE,
    "hasDashboards" BOOLEAN NOT NULL DEFAULT true,
    "inferenceEnabled" BOOLEAN NOT NULL DEFAULT false,
    "saelensConfig" JSONB,
    "saelensRelease" TEXT,
    "saelensSaeId" TEXT,
    "hfRepoId" TEXT,
    "hfFolderId" TEXT,
    "visibility" "Visibility" NOT NULL DEFAULT 'PRIVATE',
    "defaultOfModelId" TEXT,
    "setName" TEXT NOT NULL,
    "creatorId" TEXT NOT NULL REFERENCES "User"("id") ON DELETE CASCADE,
    "num_prompts" INTEGER,
    "num_tokens_in_prompt" INTEGER,
    "dataset" TEXT,
    "notes" TEXT,
    "cosSimMatchModelId" TEXT,
    "cosSimMatchSourceId" TEXT,
    "hasUmap" BOOLEAN NOT NULL DEFAULT false,
    "hasUmapLogSparsity" BOOLEAN NOT NULL DEFAULT false,
    "hasUmapClusters" BOOLEAN NOT NULL DEFAULT false,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    UNIQUE ("modelId", "id"),
    FOREIGN KEY ("modelId", "setName") REFERENCES "SourceSet"("modelId", "name"),
    FOREIGN KEY ("cosSimMatchSourceId", "cosSimMatchModelId")
        REFERENCES "Source"("id", "modelId") ON DELETE SET NULL
);

ALTER TABLE "Model"
    ADD FOREIGN KEY ("defaultSourceSetName", "id")
        REFERENCES "SourceSet"("name", "modelId") ON DELETE CASCADE,
    ADD FOREIGN KEY ("defaultSourceId", "id")
        REFERENCES "Source"("id", "modelId") ON DELETE CASCADE,
    ADD FOREIGN KEY ("defaultGraphSourceSetName", "id")
        REFERENCES "SourceSet"("name", "modelId") ON DELETE CASCADE;

CREATE TABLE "Neuron" (
    "modelId" TEXT NOT NULL REFERENCES "Model"("id") ON DELETE CASCADE,
    "layer" TEXT NOT NULL,
    "index" TEXT NOT NULL,
    "sourceSetName" TEXT,
    "creatorId" TEXT REFERENCES "User"("id") ON DELETE CASCADE,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "maxActApprox" DOUBLE PRECISION DEFAULT 0,
    "hasVector" BOOLEAN NOT NULL DEFAULT false,
    "vector" DOUBLE PRECISION[] DEFAULT ARRAY[]::DOUBLE PRECISION[],
    "vectorLabel" TEXT,
    "vectorDefaultSteerStrength" DOUBLE PRECISION DEFAULT 10,
    "hookName" TEXT,
    "topkCosSimIndices" INTEGER[] DEFAULT ARRAY[]::INTEGER[],
    "topkCosSimValues" DOUBLE PRECISION[] DEFAULT ARRAY[]::DOUBLE PRECISION[],
    "neuron_alignment_indices" INTEGER[] DEFAULT ARRAY[]::INTEGER[],
    "neuron_alignment_values" DOUBLE PRECISION[] DEFAULT ARRAY[]::DOUBLE PRECISION[],
    "neuron_alignment_l1" DOUBLE PRECISION[] DEFAULT ARRAY[]::DOUBLE PRECISION[],
    "correlated_neurons_indices" INTEGER[] DEFAULT ARRAY[]::INTEGER[],
    "correlated_neurons_pearson" DOUBLE PRECISION[] DEFAULT ARRAY[]::DOUBLE PRECISION[],
    "correlated_neurons_l1" DOUBLE PRECISION[] DEFAULT ARRAY[]::DOUBLE PRECISION[],
    "correlated_features_indices" INTEGER[] DEFAULT ARRAY[]::INTEGER[],
    "correlated_features_pearson" DOUBLE PRECISION[] DEFAULT ARRAY[]::DOUBLE PRECISION[],
    "correlated_features_l1" DOUBLE PRECISION[] DEFAULT ARRAY[]::DOUBLE PRECISION[],
    "neg_str" TEXT[] DEFAULT ARRAY[]::TEXT[],
    "neg_values" DOUBLE PRECISION[] DEFAULT ARRAY[]::DOUBLE PRECISION[],
    "pos_str" TEXT[] DEFAULT ARRAY[]::TEXT[],
    "pos_values" DOUBLE PRECISION[] DEFAULT ARRAY[]::DOUBLE PRECISION[],
    "frac_nonzero" DOUBLE PRECISION NOT NULL DEFAULT 0,
    "freq_hist_data_bar_heights" DOUBLE PRECISION[] DEFAULT ARRAY[]::DOUBLE PRECISION[],
    "freq_hist_data_bar_values" DOUBLE PRECISION[] DEFAULT ARRAY[]::DOUBLE PRECISION[],
    "logits_hist_data_bar_heights" DOUBLE PRECISION[] DEFAULT ARRAY[]::DOUBLE PRECISION[],
    "logits_hist_data_bar_values" DOUBLE PRECISION[] DEFAULT ARRAY[]::DOUBLE PRECISION[],
    "decoder_weights_dist" DOUBLE PRECISION[] DEFAULT ARRAY[]::DOUBLE PRECISION[],
    "umap_cluster" INTEGER,
    "umap_log_feature_sparsity" DOUBLE PRECISION,
    "umap_x" DOUBLE PRECISION,
    "umap_y" DOUBLE PRECISION,
    UNIQUE ("modelId", "layer", "index"),
    FOREIGN KEY ("modelId", "layer") REFERENCES "Source"("modelId", "id") ON DELETE CASCADE,
    FOREIGN KEY ("modelId", "sourceSetName")
        REFERENCES "SourceSet"("modelId", "name") ON DELETE CASCADE
);

CREATE TABLE "Activation" (
    "id" TEXT NOT NULL PRIMARY KEY,
    "tokens" TEXT[],
    "values" DOUBLE PRECISION[],
    "dataIndex" TEXT,
    "index" TEXT NOT NULL,
    "layer" TEXT NOT NULL,
    "modelId" TEXT NOT NULL,
    "dataSource" TEXT,
    "maxValue" DOUBLE PRECISION NOT NULL,
    "maxValueTokenIndex" INTEGER NOT NULL,
    "minValue" DOUBLE PRECISION NOT NULL,
    "dfaValues" DOUBLE PRECISION[] DEFAULT ARRAY[]::DOUBLE PRECISION[],
    "dfaTargetIndex" INTEGER,
    "dfaMaxValue" DOUBLE PRECISION,
    "zQIndices" INTEGER[] DEFAULT ARRAY[]::INTEGER[],
    "zKIndices" INTEGER[] DEFAULT ARRAY[]::INTEGER[],
    "zValues" DOUBLE PRECISION[] DEFAULT ARRAY[]::DOUBLE PRECISION[],
    "creatorId" TEXT NOT NULL REFERENCES "User"("id") ON DELETE CASCADE,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "lossValues" DOUBLE PRECISION[] DEFAULT ARRAY[]::DOUBLE PRECISION[],
    "logitContributions" TEXT,
    "binMin" DOUBLE PRECISION,
    "binMax" DOUBLE PRECISION,
    "binContains" DOUBLE PRECISION,
    "qualifyingTokenIndex" INTEGER,
    FOREIGN KEY ("modelId", "layer", "index")
        REFERENCES "Neuron"("modelId", "layer", "index") ON DELETE CASCADE
);

CREATE TABLE "ExplanationType" (
    "name" TEXT NOT NULL PRIMARY KEY,
    "displayName" TEXT NOT NULL,
    "description" TEXT NOT NULL,
    "featured" BOOLEAN NOT NULL DEFAULT true,
    "isAttention" BOOLEAN NOT NULL DEFAULT false,
    "explainerModelSettingsId" TEXT,
    "settings" TEXT,
    "url" TEXT,
    "creatorName" TEXT NOT NULL,
    "creatorId" TEXT NOT NULL REFERENCES "User"("id") ON DELETE CASCADE,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE "ExplanationModelType" (
    "name" TEXT NOT NULL PRIMARY KEY,
    "displayName" TEXT NOT NULL,
    "description" TEXT NOT NULL,
    "featured" BOOLEAN NOT NULL DEFAULT true,
    "openRouterModelId" TEXT,
    "url" TEXT,
    "creatorName" TEXT NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE "Explanation" (
    "id" TEXT NOT NULL PRIMARY KEY,
    "modelId" TEXT NOT NULL REFERENCES "Model"("id") ON DELETE CASCADE,
    "layer" TEXT NOT NULL,
    "index" TEXT NOT NULL,
    "description" TEXT NOT NULL,
    "authorId" TEXT NOT NULL REFERENCES "User"("id") ON DELETE CASCADE,
    "triggeredByUserId" TEXT REFERENCES "User"("id") ON DELETE SET NULL,
    "notes" TEXT,
    "scoreV1" DOUBLE PRECISION NOT NULL DEFAULT 0,
    "scoreV2" DOUBLE PRECISION,
    "umap_x" DOUBLE PRECISION DEFAULT 0,
    "umap_y" DOUBLE PRECISION DEFAULT 0,
    "umap_cluster" INTEGER DEFAULT 0,
    "umap_log_feature_sparsity" DOUBLE PRECISION DEFAULT 0,
    "typeName" TEXT REFERENCES "ExplanationType"("name") ON DELETE SET NULL,
    "explanationModelName" TEXT REFERENCES "ExplanationModelType"("name") ON DELETE SET NULL,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    FOREIGN KEY ("modelId", "layer", "index")
        REFERENCES "Neuron"("modelId", "layer", "index") ON DELETE CASCADE
);
"""

BOT_USER = "clkht01d40000jv08hvalcvly"
SEED_USERS = (
    (BOT_USER, "bot", True),
    ("cljgamm90000076zdchicy6zj", "inferenceactivation", False),
)
"""prisma/seed.ts: (id, name, admin)."""
EXPLANATION_TYPES = (
    "oai_token-act-pair",
    "oai_attention-head",
    "np_max-act-logits",
    "np_max-act",
    "np_acts-logits-general",
    "python-code",
)
"""batch-autointerp.py VALID_EXPLAINER_TYPE_NAMES."""
EXPLAINER_MODELS = (
    "gpt-4o-mini",
    "gpt-4.1-nano",
    "gpt-5-nano-2025-08-07",
    "gpt-5-mini-2025-08-07",
    "gpt-5-nano",
    "gemini-2.0-flash",
    "gemini-2.0-flash-lite",
    "gemini-2.5-flash",
    "gemini-2.5-flash-lite",
    "openai/gpt-oss-120b",
    "google/gemini-2.5-flash-lite",
)
"""batch-autointerp.py VALID_EXPLAINER_MODEL_NAMES."""

METADATA_FILES = (
    ("release.jsonl", "SourceRelease"),
    ("model.jsonl", "Model"),
    ("sourceset.jsonl", "SourceSet"),
    ("source.jsonl", "Source"),
)
ROW_FOLDERS = (
    ("features", "Neuron"),
    ("activations", "Activation"),
    ("explanations", "Explanation"),
)
"""The admin import route's order after the metadata rows."""

_COLUMNS = text("SELECT column_name FROM information_schema.columns WHERE table_name = :table")
_COLUMN_TYPES = """
SELECT column_name,
  CASE WHEN data_type = 'ARRAY' THEN udt_name::regtype::text || '[]'
       WHEN data_type = 'USER-DEFINED' THEN (
         SELECT t.typname::text FROM pg_type t WHERE t.typname = c.udt_name)
       ELSE data_type END AS data_type
FROM information_schema.columns c
WHERE table_name = :table AND column_name = ANY(:columns)
ORDER BY ordinal_position
"""


def create_schema(conn: Connection) -> None:
    """The ten tables, and the config rows Neuronpedia ships."""
    conn.exec_driver_sql(SCHEMA)
    for user_id, name, admin in SEED_USERS:
        conn.execute(
            text(
                'INSERT INTO "User" (id, name, bot, admin, "emailUnsubscribeCode") '
                "VALUES (:id, :name, true, :admin, :code)"
            ),
            {"id": user_id, "name": name, "admin": admin, "code": f"code-{name}"},
        )
    for name in EXPLANATION_TYPES:
        conn.execute(
            text(
                'INSERT INTO "ExplanationType" (name, "displayName", description, '
                '"creatorName", "creatorId") VALUES (:name, :name, :name, \'Neuronpedia\', :bot)'
            ),
            {"name": name, "bot": BOT_USER},
        )
    for name in EXPLAINER_MODELS:
        conn.execute(
            text(
                'INSERT INTO "ExplanationModelType" (name, "displayName", description, '
                "\"creatorName\") VALUES (:name, :name, :name, 'Neuronpedia')"
            ),
            {"name": name},
        )


def read_lines(path: Path) -> list[str]:
    data = path.read_bytes()
    if path.suffix == ".gz":
        data = gzip.decompress(data)
    return [line for line in data.decode().strip().split("\n") if line.strip()]


def import_jsonl(conn: Connection, table: str, lines: list[str]) -> None:
    """``importJsonlString``: one insert of the whole file, typed by the first line's keys."""
    available = list(json.loads(lines[0]))
    columns = conn.execute(text(_COLUMN_TYPES), {"table": table, "columns": available}).all()
    defs = ", ".join(f'"{name}" {kind}' for name, kind in columns)
    names = ", ".join(f'"{name}"' for name, _ in columns)
    payload = "[" + ",".join(line.replace("\\u0000", " ") for line in lines) + "]"
    conn.execute(
        text(
            f'INSERT INTO "{table}" ({names}) SELECT {names} '
            f"FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS t({defs}) ON CONFLICT DO NOTHING"
        ),
        {"rows": payload},
    )


def create_row(conn: Connection, table: str, line: str) -> None:
    """``prisma.<table>.create({data: line})`` unless the row exists: unknown keys are an error."""
    row = json.loads(line)
    known = {c for (c,) in conn.execute(_COLUMNS, {"table": table})}
    unknown = sorted(set(row) - known)
    if unknown:
        raise ValueError(f"{table}: Prisma rejects unknown fields {unknown}")
    names = ", ".join(f'"{name}"' for name in row)
    conn.execute(
        text(
            f'INSERT INTO "{table}" ({names}) SELECT {names} FROM '
            f'jsonb_populate_record(NULL::"{table}", CAST(:row AS jsonb)) ON CONFLICT DO NOTHING'
        ),
        {"row": line},
    )


def import_source(conn: Connection, source_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Loads one ``{modelId}/{sourceId}/`` folder as the admin import route does; returns every
    row it read, by table."""
    read: dict[str, list[dict[str, Any]]] = {}
    for name, table in METADATA_FILES:
        if (source_dir / name).is_file():
            lines = read_lines(source_dir / name)
            for line in lines:
                create_row(conn, table, line)
            read.setdefault(table, []).extend(json.loads(line) for line in lines)
    for folder, table in ROW_FOLDERS:
        for path in sorted((source_dir / folder).glob("batch-*.jsonl.gz")):
            lines = read_lines(path)
            import_jsonl(conn, table, lines)
            read.setdefault(table, []).extend(json.loads(line) for line in lines)
    return read
