"""Alembic migrations of the store schema; run by mistudio_store.db.migrate, no alembic.ini."""
