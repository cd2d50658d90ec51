"""The worklist database's alembic migrations: ``env.py`` (run by :mod:`pneumoscan.store.schema`, never by the
``alembic`` command: it needs the connection pneumoscan opened) and ``versions/``, one revision per schema version
(``v1`` ... ``v8``; the revision id is the version). Revisions are frozen: they never import the models, which
change; a change to the tables is a new revision (see ``docs/store.md``)."""
