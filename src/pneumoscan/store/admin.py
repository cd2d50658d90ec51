"""The worklist database for its administrator: which schema it is at (``pneumoscan db current``), and bringing it
to this pneumoscan's (``pneumoscan db upgrade``), without starting a server. ``serve`` and ``dicom-listen`` upgrade
it themselves when they start; this is for doing it ahead, at a chosen moment, or for checking."""

from __future__ import annotations

import os
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from pneumoscan.store.engine import describe, describe_error, make_engine, resolve
from pneumoscan.store.errors import StoreError
from pneumoscan.store.schema import SchemaState, ensure_schema, head_version, lock, schema_state

__all__ = ["SchemaReport", "schema_report", "upgrade"]


@dataclass(frozen=True)
class SchemaReport:
    """What a database says of its schema, against this code's: ``where`` (the database in words, password
    hidden), ``exists`` (False: a SQLite file that is not there), ``state`` (None when it does not exist) and
    ``head`` (this code's schema version)."""

    where: str
    exists: bool
    state: SchemaState | None
    head: int

    @property
    def up_to_date(self) -> bool:
        return self.state is not None and self.state.version == self.head and not self.state.hand_written

    def lines(self) -> list[str]:
        """The report in words, one line each."""
        out = [f"worklist database: {self.where}"]
        state = self.state
        if not self.exists or state is None:
            return out + ["no database there yet: 'pneumoscan db upgrade' (or serve, or dicom-listen) creates it at "
                          f"schema version {self.head}"]
        if state.foreign:
            return out + [f"not pneumoscan's: {state.foreign}"]
        if state.version is None:
            return out + [f"no worklist tables yet: 'pneumoscan db upgrade' creates them at schema version {self.head}"]
        if state.version == 0:
            return out + ["an empty schema_version table: not made by pneumoscan, or its creation was interrupted"]
        if state.hand_written:
            kind = f"schema version {state.version}, from before alembic (its schema_version table)"
        else:
            kind = f"schema version {state.version} (alembic revision {state.revision})"
        if state.version > self.head:
            return out + [f"{kind}: written by a newer pneumoscan, which knows versions up to {state.version}; this "
                          f"one knows up to {self.head}. Upgrade pneumoscan to use it"]
        if self.up_to_date:
            return out + [f"{kind}: up to date"]
        return out + [f"{kind}; this pneumoscan's is {self.head}: 'pneumoscan db upgrade' brings it there (so do "
                      "serve and dicom-listen when they start); copy the database first, a downgrade is refused"]


def schema_report(url_or_path: str | os.PathLike[str] | None) -> SchemaReport:
    """Read a database's schema (nothing is written, and a SQLite file that is not there is not created).

    Raises:
        StoreError: the database cannot be reached or read (the message names it, password hidden).
    """
    url, path = resolve(url_or_path)
    where = describe(url, path)
    head = head_version()
    if path is not None and not path.exists():
        return SchemaReport(where, False, None, head)
    engine = make_engine(url, path)
    try:
        with engine.connect() as conn:
            state = schema_state(conn)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot read the worklist database {where}: {describe_error(exc)}") from None
    finally:
        engine.dispose()
    return SchemaReport(where, True, state, head)


def upgrade(url_or_path: str | os.PathLike[str] | None) -> tuple[SchemaReport, int]:
    """Create the database's tables or upgrade them to this code's schema, in one transaction (all or nothing);
    return ``(the report from before, the version now)``. Another process opening the database meanwhile waits.

    Raises:
        SchemaTooNewError: the database is newer than this code.
        StoreError: it cannot be reached, or is not pneumoscan's (the message says which).
    """
    url, path = resolve(url_or_path)
    where = describe(url, path)
    existed = path is None or path.exists()
    engine = make_engine(url, path)
    try:
        with engine.begin() as conn:
            lock(conn)
            before = SchemaReport(where, existed, schema_state(conn), head_version())
            version = ensure_schema(conn, where=f"the worklist database {where}")
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot upgrade the worklist database {where}: {describe_error(exc)}") from None
    finally:
        engine.dispose()
    return before, version
