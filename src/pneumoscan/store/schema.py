"""The worklist database's schema version, and bringing a database up to it with alembic.

Each schema version is one alembic revision in :mod:`pneumoscan.store.migrations` (revision ``vN`` is version N;
``v1`` makes the first tables). A new database is made by running every revision from ``v1`` (on SQLite: what
they made on an in-memory database once per process, replayed); an older one gets the revisions above its own. A database from before alembic (pneumoscan's hand-written ``schema_version`` table,
versions 1 to 7, and no ``alembic_version`` table) is first stamped at the revision of its version, then upgraded.

Everything happens in the one transaction that opens the store (``engine.begin()``), so a failed upgrade leaves
the database as it was. Two processes opening one database at once take turns: on PostgreSQL through a
transaction-level advisory lock, on SQLite through the write lock its transactions take up front
(``BEGIN IMMEDIATE``). A database at a version above this code's (written by a newer pneumoscan) is refused,
never "downgraded" by guessing; downgrades are refused too (:mod:`pneumoscan.store.migrations.policy`).

To change the tables: edit the models, add a revision ``v<N+1>`` (down_revision ``v<N>``) to
``migrations/versions`` that turns version N's tables into the new ones with alembic's ``op`` on SQLite and
PostgreSQL alike, and raise :data:`SCHEMA_VERSION` to N+1 (``tests/test_store_migrations.py`` checks that the
revisions make exactly the models' tables).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Connection, func, inspect, select, text

from pneumoscan.store.errors import SchemaTooNewError, StoreError
from pneumoscan.store.models import Base, SchemaVersion

__all__ = ["MIGRATIONS_DIR", "SCHEMA_VERSION", "SchemaState", "database_version", "ensure_schema", "forget_revisions",
           "head_version",
           "lock", "revision_of", "schema_state", "version_of"]

log = logging.getLogger(__name__)

#: The schema this code reads and writes (the version of the newest revision in ``migrations/versions``).
SCHEMA_VERSION = 8
#: alembic's script folder (``env.py`` and ``versions/``), inside the package.
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
#: Folders of revisions, in order; tests add one holding made-up later revisions.
VERSION_DIRS: tuple[Path, ...] = (MIGRATIONS_DIR / "versions",)

_REVISION = re.compile(r"^v([1-9][0-9]{0,5})$")
_OUR_TABLES = frozenset(t for t in Base.metadata.tables if t != SchemaVersion.__tablename__)
_PG_LOCK_KEY = 0x706E65756D6F  # "pneumo": serialises two processes opening one PostgreSQL database at once


def revision_of(version: int) -> str:
    """The alembic revision id of a schema version: ``v<version>``."""
    return f"v{int(version)}"


def version_of(revision: str | None) -> int | None:
    """The schema version of one of pneumoscan's revision ids (``v8`` -> 8); None for anything else."""
    match = _REVISION.match(revision or "")
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class SchemaState:
    """What a database says of its schema.

    ``version``: its schema version (None: no pneumoscan tables at all, 0: an empty ``schema_version`` table);
    ``revision``: the alembic revision in ``alembic_version`` (None before alembic); ``hand_written``: only the
    ``schema_version`` table says the version (a database from before alembic, stamped when it is upgraded);
    ``foreign``: pneumoscan's tables without either version table, or an alembic revision that is not ours.
    """

    version: int | None
    revision: str | None = None
    hand_written: bool = False
    foreign: str = ""


def _alembic_config(connection: Connection | None = None):  # -> alembic.config.Config
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("path_separator", "os")
    cfg.set_main_option("version_locations", ":".join(str(p) for p in VERSION_DIRS))
    cfg.attributes["connection"] = connection
    return cfg


@lru_cache(maxsize=8)
def _head(dirs: tuple[Path, ...]) -> int:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config())
    heads = script.get_heads()
    versions = [version_of(h) for h in heads]
    if len(heads) != 1 or versions[0] is None:
        raise StoreError(f"the worklist database's migrations in {MIGRATIONS_DIR} have heads {heads}; expected one "
                         "revision named v<N>")
    return int(versions[0])


def forget_revisions() -> None:
    """Read the revisions again on next use (they are read once per process; tests add some at run time)."""
    _head.cache_clear()
    _sqlite_script.cache_clear()


def head_version() -> int:
    """The schema version of the newest revision this code has (what :func:`ensure_schema` upgrades to)."""
    return _head(VERSION_DIRS)


def schema_state(conn: Connection) -> SchemaState:
    """Read what ``conn``'s database says of its schema (nothing is written)."""
    tables = set(inspect(conn).get_table_names())
    if "alembic_version" in tables:
        revisions = [r for (r,) in conn.execute(text("SELECT version_num FROM alembic_version"))]
        if len(revisions) == 1 and version_of(revisions[0]) is not None:
            return SchemaState(version_of(revisions[0]), revisions[0])
        if revisions:
            return SchemaState(None, ", ".join(revisions),
                               foreign=f"its alembic_version table names {', '.join(revisions)}, which is not one of "
                                       "pneumoscan's schema revisions (v1, v2, ...)")
    if SchemaVersion.__tablename__ in tables:
        version = int(conn.execute(select(func.max(SchemaVersion.version))).scalar() or 0)
        return SchemaState(version, None, hand_written=True)
    found = _OUR_TABLES & tables
    if found:
        return SchemaState(None, foreign=f"it holds worklist tables ({', '.join(sorted(found))}) but no "
                                         "schema_version table, so its schema cannot be known")
    return SchemaState(None)


def database_version(conn: Connection) -> int | None:
    """The database's schema version: alembic's revision, else the hand-written table's highest version (0 when
    that table is empty); None for a database without pneumoscan's tables."""
    return schema_state(conn).version


def lock(conn: Connection) -> None:
    """Take the schema lock until ``conn``'s transaction ends: PostgreSQL's transaction-level advisory lock (taking
    it again in the same transaction is allowed). SQLite needs none: the store's transactions take the file's write
    lock when they begin."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})


def _check(state: SchemaState, head: int, where: str) -> None:
    if state.foreign:
        raise StoreError(f"{where}: {state.foreign}; point --db at a new database, or move this one aside")
    if state.version is not None and state.version > head:
        raise SchemaTooNewError(
            f"{where} is at schema version {state.version}, written by a newer pneumoscan; this one knows versions "
            f"up to {head}. Upgrade pneumoscan (pip install -U pneumoscan), or point --db at another database; "
            "this one is left untouched")
    if state.version == 0:
        raise StoreError(f"{where} has an empty schema_version table; it was not made by pneumoscan, or its "
                         "creation was interrupted; point --db at a new database")


def ensure_schema(conn: Connection, *, where: str = "the worklist database") -> int:
    """Create the tables, or upgrade them to :func:`head_version`; return the version the database is now at.

    Runs in the caller's transaction (``engine.begin()``), so it applies everything or nothing. A database
    already at the head is only read.

    Raises:
        SchemaTooNewError: the database is at a version above this code's.
        StoreError: its tables are not pneumoscan's as far as it can tell (see :class:`SchemaState`), or its
            schema_version table is empty.
    """
    lock(conn)
    head = head_version()
    state = schema_state(conn)
    _check(state, head, where)
    if state.version == head and not state.hand_written:
        return head
    from alembic import command

    cfg = _alembic_config(conn)
    if state.version is None:
        log.info("creating %s at schema version %d", where, head)
        if conn.dialect.name == "sqlite":
            _replay(conn, _sqlite_script(VERSION_DIRS))
            return head
    else:
        if state.hand_written:
            log.info("%s is at schema version %d (from before alembic): stamping it at revision %s", where,
                     state.version, revision_of(state.version))
            command.stamp(cfg, revision_of(state.version))
        if state.version < head:
            log.info("upgrading %s from schema version %d to %d", where, state.version, head)
    command.upgrade(cfg, revision_of(head))
    return head


@dataclass(frozen=True)
class _Script:
    """What the revisions did to a new SQLite database: its schema's statements in order, and its version rows."""

    statements: tuple[str, ...]
    revision: str
    versions: tuple[tuple[int, str], ...]


@lru_cache(maxsize=4)
def _sqlite_script(dirs: tuple[Path, ...]) -> _Script:
    """Run every revision once on an in-memory SQLite database and read back what they made: the statements SQLite
    keeps for its tables and indexes (an added column is written into its table's statement), alembic's revision
    and the versions recorded. A new SQLite database then gets those in a few milliseconds instead of the dozens
    of statements each revision compiles and runs (a new in-memory database is made for every server the tests
    start)."""
    from alembic import command
    from sqlalchemy import create_engine
    from sqlalchemy.pool import StaticPool

    engine = create_engine("sqlite://", poolclass=StaticPool)
    try:
        with engine.begin() as conn:
            command.upgrade(_alembic_config(conn), "heads")
            statements = tuple(sql for (sql,) in conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY rowid"))
            (revision,) = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars()
            versions = tuple((int(v), str(d)) for v, d in conn.execute(
                select(SchemaVersion.version, SchemaVersion.description).order_by(SchemaVersion.version)))
    finally:
        engine.dispose()
    return _Script(statements, revision, versions)


def _replay(conn: Connection, script: _Script) -> None:
    from datetime import UTC, datetime

    for statement in script.statements:
        conn.exec_driver_sql(statement)
    conn.execute(text("INSERT INTO alembic_version (version_num) VALUES (:r)"), {"r": script.revision})
    now = datetime.now(UTC)
    conn.execute(SchemaVersion.__table__.insert(), [{"version": v, "applied_at": now, "description": d}
                                                    for v, d in script.versions])
