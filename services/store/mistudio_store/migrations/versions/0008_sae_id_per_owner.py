"""An SAE's id is unique per owner, not across the store: two owners may each register ``my-sae``.

The unique key moves from ``sae_id`` to ``(owner, sae_id)``; it also serves ListSaes of one
owner, so the plain ``(owner, sae_id)`` index goes. Every row already stored keeps its id, and
a downgrade fails (rather than merging) when two owners share an id.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("saes") as batch:
        batch.drop_constraint(batch.f("uq_saes_sae_id"), type_="unique")
        batch.drop_index(batch.f("ix_saes_owner_sae_id"))
        batch.create_unique_constraint(batch.f("uq_saes_owner_sae_id"), ["owner", "sae_id"])


def downgrade() -> None:
    with op.batch_alter_table("saes") as batch:
        batch.drop_constraint(batch.f("uq_saes_owner_sae_id"), type_="unique")
        batch.create_index(batch.f("ix_saes_owner_sae_id"), ["owner", "sae_id"])
        batch.create_unique_constraint(batch.f("uq_saes_sae_id"), ["sae_id"])
