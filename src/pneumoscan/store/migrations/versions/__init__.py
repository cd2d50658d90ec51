"""One alembic revision per schema version of the worklist database (revision id ``vN`` is schema version N)."""
