"""The worklist database (SQLAlchemy; SQLite by default, or PostgreSQL through psycopg): results that survive
restarts, readers' reviews, an audit trail and retention. ``pneumoscan serve`` and ``pneumoscan dicom-listen`` write
to it (several of them may share one PostgreSQL database); the page reads it.

Where things live: :mod:`.models` (the tables), :mod:`.schema` (the schema version; creating and upgrading a
database with alembic), ``migrations/`` (alembic's environment and one revision per schema version),
:mod:`.admin` (``pneumoscan db current`` / ``db upgrade``), :mod:`.engine` (paths, URLs, the default data folder,
SQLite settings), :mod:`.rows` (filters, orders, rows as dicts, the thumbnail check), :mod:`.writes` (a Result as
a row; inserting it once; retention), :mod:`.studies` (a study's rows listed together, the same input counted
instead of stored twice), :mod:`.worklist_store` (:class:`WorklistStore`), :mod:`.outbox` (the DICOM node's SR/SC
until the PACS has them: ``store.outbox``), :mod:`.errors`. How to run it on PostgreSQL: ``docs/store.md``.

    store = WorklistStore()                    # ~/.local/share/pneumoscan/worklist.db (or $PNEUMOSCAN_DATA_DIR)
    store = WorklistStore("postgresql://pneumoscan@db.example/pneumoscan")   # psycopg; password from ~/.pgpass
    rid = store.add(result, input_sha256=..., source="upload", filename_hash=..., client="local")  # a Result
    store.list(unreviewed_only=True)           # highest risk first
    store.list(borderline=0.10)                # within 10 points of the threshold (0-100 score)
    store.add_or_count(result, input_sha256=..., source="upload", client="Dr A. Lee")  # (id, times received)
    store.review(rid, verdict="agree", note="", reviewer="Dr A. Lee")
"""

from __future__ import annotations

from pneumoscan.store.engine import (
           DATA_DIR_ENV_VAR,
           DB_FILENAME,
           default_data_dir,
           default_db_path,
)
from pneumoscan.store.errors import ResultNotFoundError, SchemaTooNewError, StoreError
from pneumoscan.store.models import CONTEXT_FIELDS, OUTBOX_STATES
from pneumoscan.store.outbox import Outbox, OutgoingObject, Received
from pneumoscan.store.rows import MAX_LIMIT, MAX_THUMBNAIL_CHARS, ORDERS
from pneumoscan.store.schema import SCHEMA_VERSION
from pneumoscan.store.worklist_store import MAX_NOTE_CHARS, VERDICTS, WorklistStore

__all__ = ["CONTEXT_FIELDS", "DATA_DIR_ENV_VAR", "DB_FILENAME", "MAX_LIMIT", "MAX_NOTE_CHARS", "MAX_THUMBNAIL_CHARS",
           "ORDERS", "OUTBOX_STATES", "SCHEMA_VERSION", "VERDICTS", "Outbox", "OutgoingObject", "Received",
           "ResultNotFoundError", "SchemaTooNewError", "StoreError", "WorklistStore", "default_data_dir",
           "default_db_path"]
