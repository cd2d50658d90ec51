"""The worklist database's schema version, and the ordered migrations that bring an older database up to it.

A new database gets the current tables (:mod:`pneumoscan.store.models`) and one ``schema_version`` row saying
so. An older one gets each migration above its version, in order, each recorded in ``schema_version`` as it is
applied, all in the one transaction that opens the store (so a failed migration leaves the database as it was).
A database whose version is above :data:`SCHEMA_VERSION` was written by a newer pneumoscan: it is refused,
never "downgraded" by guessing.

To change the tables: edit the models, raise :data:`SCHEMA_VERSION` by one, and add a :class:`Migration` with
that version that turns the previous version's tables into the new ones (``ALTER TABLE ...`` through
``conn.execute``), working on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, func, inspect, select, text

from pneumoscan.store.errors import SchemaTooNewError, StoreError
from pneumoscan.store.models import Base, OutboxItem, SchemaVersion

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "Migration", "database_version", "ensure_schema"]

log = logging.getLogger(__name__)

#: The schema this code reads and writes.
SCHEMA_VERSION = 7


@dataclass(frozen=True)
class Migration:
    """Turns a database at ``version - 1`` into one at ``version``."""

    version: int
    description: str
    apply: Callable[[Connection], None]


def _add_thumbnail(conn: Connection) -> None:
    # NOT NULL with a default fills the rows already there with "" (SQLite and PostgreSQL alike).
    conn.execute(text("ALTER TABLE worklist_results ADD COLUMN thumbnail TEXT NOT NULL DEFAULT ''"))


def _add_cause(conn: Connection) -> None:
    # Rows from before have no cause: "" and NULL, which is what a film without one stores.
    conn.execute(text("ALTER TABLE worklist_results ADD COLUMN cause VARCHAR(16) NOT NULL DEFAULT ''"))
    conn.execute(text("ALTER TABLE worklist_results ADD COLUMN cause_probability FLOAT"))
    conn.execute(text("ALTER TABLE worklist_results ADD COLUMN cause_threshold FLOAT"))


def _add_score_calibration(conn: Connection) -> None:
    # Rows from before do not say where their score was calibrated: "".
    conn.execute(text("ALTER TABLE worklist_results ADD COLUMN score_calibration VARCHAR(200) NOT NULL DEFAULT ''"))


def _add_outbox(conn: Connection) -> None:
    # The outbox table as the model says (SQLAlchemy types: BLOB on SQLite, BYTEA on PostgreSQL); a flag for a SOP
    # Instance UID received twice with other pixels (old rows: no conflict known); an index to look a received SOP
    # Instance UID up (IF NOT EXISTS: a database made from today's models already has it).
    OutboxItem.__table__.create(conn, checkfirst=True)
    default = "0" if conn.dialect.name == "sqlite" else "false"
    conn.execute(text(f"ALTER TABLE worklist_results ADD COLUMN uid_conflict BOOLEAN NOT NULL DEFAULT {default}"))
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_worklist_results_sop_uid ON worklist_results (sop_uid)"))


def _add_scope_caution(conn: Connection) -> None:
    # Rows from before carry no caution: "" (the gate then had one verdict, and refused what it now cautions).
    conn.execute(text("ALTER TABLE worklist_results ADD COLUMN scope_caution VARCHAR(200) NOT NULL DEFAULT ''"))


def _add_times_received(conn: Connection) -> None:
    # Every row from before was received once, as far as anyone knows.
    conn.execute(text("ALTER TABLE worklist_results ADD COLUMN times_received INTEGER NOT NULL DEFAULT 1"))


#: Every migration after version 1 (the first tables), in order of version.
MIGRATIONS: tuple[Migration, ...] = (
    Migration(2, "worklist_results.thumbnail: a small preview of each film for the worklist", _add_thumbnail),
    Migration(3, "worklist_results.cause, cause_probability, cause_threshold: a flagged film's bacterial/viral "
                 "pattern", _add_cause),
    Migration(4, "worklist_results.score_calibration: where the answering model's score was calibrated",
              _add_score_calibration),
    Migration(5, "dicom_outbox: the DICOM node's SR and SC until the PACS has them; worklist_results.uid_conflict "
                 "and an index on sop_uid: a SOP Instance UID received again", _add_outbox),
    Migration(6, "worklist_results.scope_caution: a chest film scored although unlike the training films",
              _add_scope_caution),
    Migration(7, "worklist_results.times_received: the same input sent again is one result with a count",
              _add_times_received),
)

_OUR_TABLES = frozenset(t for t in Base.metadata.tables if t != SchemaVersion.__tablename__)
_PG_LOCK_KEY = 0x706E65756D6F  # "pneumo": serialises two processes opening one PostgreSQL database at once


def database_version(conn: Connection) -> int | None:
    """The database's schema version: the highest applied, 0 for an empty database, None without the table."""
    if SchemaVersion.__tablename__ not in inspect(conn).get_table_names():
        return None
    return int(conn.execute(select(func.max(SchemaVersion.version))).scalar() or 0)


def ensure_schema(conn: Connection, *, version: int | None = None, migrations: Sequence[Migration] | None = None,
                  where: str = "the worklist database") -> int:
    """Create the tables, or migrate them up to ``version`` (default :data:`SCHEMA_VERSION`) with ``migrations``
    (default :data:`MIGRATIONS`); return the version the database is now at.

    Runs in the caller's transaction (``engine.begin()``), so it applies everything or nothing.

    Raises:
        SchemaTooNewError: the database is at a version above ``version``.
        StoreError: it holds pneumoscan's tables without a ``schema_version`` table, or a migration is missing.
    """
    version = SCHEMA_VERSION if version is None else version
    migrations = MIGRATIONS if migrations is None else migrations
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
    current = database_version(conn)
    now = datetime.now(UTC)
    if current is None:
        found = _OUR_TABLES & set(inspect(conn).get_table_names())
        if found:
            raise StoreError(f"{where} holds worklist tables ({', '.join(sorted(found))}) but no schema_version "
                             "table, so its schema cannot be known; point --db at a new database, or move this "
                             "one aside")
        Base.metadata.create_all(conn)
        conn.execute(SchemaVersion.__table__.insert().values(version=version, applied_at=now,
                                                             description="created"))
        log.info("created %s at schema version %d", where, version)
        return version
    if current > version:
        raise SchemaTooNewError(
            f"{where} is at schema version {current}, written by a newer pneumoscan; this one knows versions up "
            f"to {version}. Upgrade pneumoscan (pip install -U pneumoscan), or point --db at another database; "
            "this one is left untouched")
    if current == 0:
        raise StoreError(f"{where} has an empty schema_version table; it was not made by pneumoscan, or its "
                         "creation was interrupted; point --db at a new database")
    steps = {m.version: m for m in migrations}
    for v in range(current + 1, version + 1):
        if v not in steps:
            raise StoreError(f"no migration to schema version {v} for {where} (at version {current})")
        log.info("migrating %s from schema version %d to %d: %s", where, v - 1, v, steps[v].description)
        steps[v].apply(conn)
        conn.execute(SchemaVersion.__table__.insert().values(version=v, applied_at=now,
                                                             description=steps[v].description))
    return version
