"""Database adapter: ORM models, engine setup and migrations."""
