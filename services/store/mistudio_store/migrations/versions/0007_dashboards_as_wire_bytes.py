"""Cached dashboards: kept as protobuf wire bytes instead of JSON.

``dashboards.data`` held a FeatureDashboard as JSON (JSONB on PostgreSQL), which nothing queried
inside; encoding it, the database's own JSON handling and parsing it back were the largest cost
of caching and collecting dashboards. It becomes the message's deterministic wire form
(``dashboard_codec.dashboard_bytes``; BYTEA / BLOB). ``content_hash`` was already the SHA-256 of
that form, so the values stay the same; it is recomputed from the converted bytes all the same,
so that it always matches what the row holds.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import op
from google.protobuf import json_format
from mistudio.common.v1 import dashboard_pb2
from mistudio_common.dashboard_codec import content_hash_of, dashboard_bytes
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

JSON_DOC = sa.JSON(none_as_null=True).with_variant(
    postgresql.JSONB(none_as_null=True), "postgresql"
)
BATCH_ROWS = 500
"""Rows converted per statement: bounds the memory a wide SAE's cache needs while migrating."""


def upgrade() -> None:
    with op.batch_alter_table("dashboards") as table:
        table.add_column(sa.Column("wire", sa.LargeBinary(), nullable=True))
    _convert(("data", JSON_DOC), ("wire", sa.LargeBinary()), _json_to_wire)
    with op.batch_alter_table("dashboards") as table:
        table.drop_column("data")
        table.alter_column(
            "wire", new_column_name="data", existing_type=sa.LargeBinary(), nullable=False
        )


def downgrade() -> None:
    """Back to JSON in json_format's form, which the JSON reader before 0007 also read."""
    with op.batch_alter_table("dashboards") as table:
        table.add_column(sa.Column("document", JSON_DOC, nullable=True))
    _convert(("data", sa.LargeBinary()), ("document", JSON_DOC), _wire_to_json)
    with op.batch_alter_table("dashboards") as table:
        table.drop_column("data")
        table.alter_column(
            "document", new_column_name="data", existing_type=JSON_DOC, nullable=False
        )


def _json_to_wire(data: Any) -> dict[str, Any]:
    """The stored JSON (this store's own form or json_format's) as wire bytes and their hash."""
    try:
        message = dashboard_pb2.FeatureDashboard(**data)
    except (TypeError, ValueError):  # json_format's form: int64 as strings, camelCase keys
        message = json_format.ParseDict(data, dashboard_pb2.FeatureDashboard())
    wire = dashboard_bytes(message)
    return {"value": wire, "hash": content_hash_of(wire)}


def _wire_to_json(wire: bytes) -> dict[str, Any]:
    message = dashboard_pb2.FeatureDashboard.FromString(wire)
    document = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return {"value": document, "hash": content_hash_of(wire)}


def _convert(
    source: tuple[str, sa.types.TypeEngine[Any]],
    target: tuple[str, sa.types.TypeEngine[Any]],
    convert: Callable[[Any], dict[str, Any]],
) -> None:
    """Fills ``target`` from ``source`` row by row, in key order, BATCH_ROWS at a time."""
    table = sa.table(
        "dashboards",
        sa.column("sae_pk", sa.BigInteger),
        sa.column("params_key", sa.String),
        sa.column("feature_index", sa.BigInteger),
        sa.column("content_hash", sa.String),
        sa.column(*source),
        sa.column(*target),
    )
    keys = (table.c.sae_pk, table.c.params_key, table.c.feature_index)
    update = (
        table.update()
        .where(
            table.c.sae_pk == sa.bindparam("key_sae_pk"),
            table.c.params_key == sa.bindparam("key_params_key"),
            table.c.feature_index == sa.bindparam("key_feature_index"),
        )
        .values({target[0]: sa.bindparam("value"), "content_hash": sa.bindparam("hash")})
    )
    bind = op.get_bind()
    last: tuple[Any, ...] | None = None
    while True:
        query = sa.select(*keys, table.c[source[0]]).order_by(*keys).limit(BATCH_ROWS)
        if last is not None:
            query = query.where(sa.tuple_(*keys) > last)
        rows = bind.execute(query).all()
        if not rows:
            return
        bind.execute(
            update,
            [
                {
                    "key_sae_pk": sae_pk,
                    "key_params_key": params_key,
                    "key_feature_index": feature_index,
                    **convert(value),
                }
                for sae_pk, params_key, feature_index, value in rows
            ],
        )
        last = tuple(rows[-1][:3])
