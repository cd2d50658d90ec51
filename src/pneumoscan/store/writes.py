"""How the worklist database's rows are written: a :class:`~pneumoscan.result.Result` as a row, the insert with its
audit row and outbox items (once only, for a row with a repeat key: two servers inserting the same key at once make
one row), and the retention purge (on PostgreSQL one at a time, its rows locked in one order)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sqlalchemy import delete, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pneumoscan.store.models import (
    CATEGORY_ERROR,
    CATEGORY_OUT_OF_SCOPE,
    CATEGORY_SCORED,
    CONTEXT_FIELDS,
    AuditEvent,
    OutboxItem,
    ResultRow,
    Review,
)
from pneumoscan.store.outbox import OutgoingObject, new_items
from pneumoscan.store.rows import clean, thumbnail_or_blank, utc

if TYPE_CHECKING:
    from pneumoscan.result import Result

__all__ = ["insert", "insert_once", "insert_unless_key_taken", "new_row", "purge_before"]

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PG_PURGE_LOCK_KEY = 0x706E65757267  # "neurg": one retention purge at a time on a shared PostgreSQL database
_STR_LIMITS = {"source": 32, "filename_hash": 64, "decision": 32, "model_name": 128, "model_version": 128,
               "client": 128, "score_calibration": 200, "scope_caution": 200}


def new_row(result: Result, *, input_sha256: str, source: str, filename_hash: str = "", client: str = "",
            created: datetime | None = None, thumbnail: str | None = None, uid_conflict: bool = False) -> ResultRow:
    """The row that keeps ``result`` (see :meth:`~pneumoscan.store.WorklistStore.add` for the arguments).

    Raises:
        ValueError: ``input_sha256`` is not 64 hex digits.
    """
    sha = str(input_sha256).strip().lower()
    if not _SHA256.match(sha):
        raise ValueError(f"input_sha256 must be 64 hexadecimal digits (SHA-256 of the input's bytes), "
                         f"got {input_sha256!r:.80}")
    if not result.read:
        category = CATEGORY_ERROR
    elif not result.in_scope:
        category = CATEGORY_OUT_OF_SCOPE
    else:
        category = CATEGORY_SCORED
    strings = {k: clean(v, _STR_LIMITS[k]) for k, v in (
        ("source", source), ("filename_hash", filename_hash), ("decision", result.decision),
        ("model_name", result.model.name), ("model_version", result.model.version), ("client", client),
        ("score_calibration", result.model.calibration), ("scope_caution", result.scope_caution))}
    context = {k: clean(v, CONTEXT_FIELDS[k]) for k, v in result.context.to_dict().items() if k in CONTEXT_FIELDS}
    return ResultRow(created=utc(created) or datetime.now(UTC), category=category, input_sha256=sha,
                     probability=result.probability, threshold=result.threshold,
                     in_scope=result.in_scope, scope_reason=clean(result.scope_reason, 2000),
                     cause=result.cause, cause_probability=result.cause_probability if result.cause else None,
                     cause_threshold=result.model.cause_threshold,
                     error=clean(result.error, newlines=True)[:4000], thumbnail=thumbnail_or_blank(thumbnail),
                     uid_conflict=bool(uid_conflict), **strings, **context)


def insert(s: Session, row: ResultRow, outbox: Sequence[OutgoingObject] = (), forward_to: str = "") -> int:
    """Insert ``row`` with its audit row and its outbox items (``outbox``, for the PACS ``forward_to``); return its
    id."""
    s.add(row)
    s.flush()
    _with_row(s, row, outbox, forward_to)
    return int(row.id)


def insert_once(s: Session, row: ResultRow, outbox: Sequence[OutgoingObject] = (), forward_to: str = "") -> int | None:
    """:func:`insert`, unless another row holds ``row.repeat_key`` already: then nothing is inserted and None is
    returned (a row without a key is always inserted)."""
    if row.repeat_key is None:
        return insert(s, row, outbox, forward_to)
    if not insert_unless_key_taken(s, row):
        return None
    _with_row(s, row, outbox, forward_to)
    return int(row.id)


def _with_row(s: Session, row: ResultRow, outbox: Sequence[OutgoingObject], forward_to: str) -> None:
    """What is written with a new row: its audit row and its outbox items."""
    s.add(AuditEvent(created=row.created, event="result", result_id=row.id, model_name=row.model_name,
                     model_version=row.model_version, client=row.client, input_sha256=row.input_sha256,
                     detail=f"{row.source or 'unknown source'}: {row.decision or 'not read'}"
                            + ("; SOP Instance UID received before with other pixels" if row.uid_conflict else "")))
    s.add_all(new_items(int(row.id), outbox, row.created, clean(forward_to, 128)))


def insert_unless_key_taken(s: Session, row: ResultRow) -> bool:
    """Insert ``row`` unless another row holds its ``repeat_key`` (the unique index decides, so two servers
    inserting the same key at once make one row: PostgreSQL makes the second wait for the first's commit); set
    ``row.id`` and return True when inserted. ``INSERT ... ON CONFLICT DO NOTHING`` on SQLite and PostgreSQL; a
    savepoint on another database."""
    table = ResultRow.__table__
    values = {c.key: getattr(row, c.key) for c in table.columns if c.key != "id" and getattr(row, c.key) is not None}
    dialect = s.get_bind().dialect.name
    if dialect in ("postgresql", "sqlite"):
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        else:
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        stmt = (dialect_insert(table).values(**values).on_conflict_do_nothing(index_elements=[table.c.repeat_key])
                .returning(table.c.id))
        rid = s.execute(stmt).scalar()
        if rid is None:
            return False
        row.id = int(rid)
        return True
    try:
        with s.begin_nested():
            s.add(row)
            s.flush()
    except IntegrityError:  # the savepoint's rollback took the row out of the session
        return False
    return True


def purge_before(s: Session, cutoff: datetime, age: str, now: datetime) -> tuple[int, int, int]:
    """Delete the results created before ``cutoff`` (with their reviews and outbox items) and the audit rows
    older than it; write the ``purge`` audit row (``age``: the retention in words); return how many results,
    reviews and audit rows went. On PostgreSQL one purge runs at a time (every server purges at start-up and
    daily) and the results it deletes are locked in id order first, so that it never deadlocks with a writer."""
    old = select(ResultRow.id).where(ResultRow.created < cutoff)
    if s.get_bind().dialect.name == "postgresql":
        s.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_PURGE_LOCK_KEY})
        s.execute(old.order_by(ResultRow.id).with_for_update()).all()
    n_reviews = s.execute(delete(Review).where(Review.result_id.in_(old))).rowcount or 0
    s.execute(delete(OutboxItem).where(OutboxItem.result_id.in_(old)))  # their SR/SC go with them
    n_results = s.execute(delete(ResultRow).where(ResultRow.created < cutoff)).rowcount or 0
    n_audit = s.execute(delete(AuditEvent).where(AuditEvent.created < cutoff)).rowcount or 0
    if n_results or n_reviews or n_audit:
        s.add(AuditEvent(created=now, event="purge", client="retention",
                         detail=f"deleted {n_results} result(s), {n_reviews} review(s) and {n_audit} audit "
                                f"row(s) older than {age} (before {cutoff.isoformat()})"))
    return int(n_results), int(n_reviews), int(n_audit)
