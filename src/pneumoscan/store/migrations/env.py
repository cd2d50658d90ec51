"""alembic's environment for the worklist database, run by :func:`pneumoscan.store.schema.ensure_schema` (and
``pneumoscan db upgrade``) on the connection pneumoscan opened, inside its transaction: the whole upgrade is
applied or none of it. Each applied revision is also recorded in the hand-written ``schema_version`` table, so
that a pneumoscan from before alembic refuses the database as newer, in its own words, instead of misreading it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import context

from pneumoscan.store.errors import StoreError
from pneumoscan.store.models import Base

_legacy = sa.table("schema_version", sa.column("version", sa.Integer), sa.column("applied_at", sa.DateTime),
                   sa.column("description", sa.String))


def _record(*, ctx: Any, step: Any, heads: Any, run_args: Any) -> None:
    """After each upgrade step: one ``schema_version`` row for the revision's version (``vN`` is version N)."""
    if step.is_stamp or not step.is_upgrade or not step.up_revision_id:
        return
    version = int(step.up_revision_id.lstrip("v"))
    conn = ctx.connection
    if conn.execute(sa.select(_legacy.c.version).where(_legacy.c.version == version)).first() is None:
        doc = " ".join((context.script.get_revision(step.up_revision_id).doc or "").split())
        conn.execute(_legacy.insert().values(version=version, applied_at=datetime.now(UTC).replace(tzinfo=None),
                                             description=doc[:200]))


def run() -> None:
    connection = context.config.attributes.get("connection")
    if connection is None or context.is_offline_mode():
        raise StoreError("the worklist database's migrations run through pneumoscan ('pneumoscan db upgrade'), "
                         "on a connection it opened; not through the alembic command")
    context.configure(connection=connection, target_metadata=Base.metadata, on_version_apply=_record,
                      transactional_ddl=True)
    with context.begin_transaction():
        context.run_migrations()


run()
