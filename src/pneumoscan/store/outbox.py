"""The DICOM node's outbox: each result's SR and SC (DICOM Part 10 bytes) until the PACS has stored them.

The node writes a result's objects with the result itself, in one transaction, before it answers the sender
(:meth:`pneumoscan.store.WorklistStore.add_received`); its sender thread then reads what is due here, C-STOREs it
and records the outcome (:class:`Outbox`). Nothing is held only in memory, so a crash or a restart loses nothing:
the next start sends what is still pending. Delivery is at least once: an object whose C-STORE succeeded but whose
``delivered`` mark did not reach the database (a crash in between) is sent again, with the same SOP Instance UID.

Also here: what the store knows of a received SOP Instance UID (:func:`received`: the same pixels again, or other
pixels under the same UID) and each result's forwarding state as the worklist shows it (:func:`forward_states`).
"""

from __future__ import annotations

import builtins
import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from pneumoscan.store.models import CATEGORY_ERROR, OUTBOX_STATES, OutboxItem, ResultRow
from pneumoscan.store.rows import check_limit, clean

__all__ = ["DueItem", "Outbox", "OutgoingObject", "Received", "forward_states", "item_dict", "new_items", "received"]

#: Longest error text kept per item.
_MAX_ERROR = 500


@dataclass(frozen=True)
class OutgoingObject:
    """One DICOM object the node made for a result, as the outbox keeps it: ``kind`` ("SR" or "SC") and its Part
    10 bytes and UIDs; or, when it could not be made, ``error`` (kept as a failed item, so the worklist says why
    nothing reached the PACS)."""

    kind: str
    data: bytes = b""
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    transfer_syntax_uid: str = ""
    error: str = ""


@dataclass(frozen=True)
class DueItem:
    """A pending item due to be sent (its bytes are read one at a time: :meth:`Outbox.data`)."""

    id: int
    result_id: int
    kind: str
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    attempts: int
    created: datetime


@dataclass(frozen=True)
class Received:
    """What the store knows of a SOP Instance UID the node receives: ``duplicate_of``, the row already scored from
    the same bytes (None if none); ``conflicts_with``, rows with this UID but other bytes."""

    duplicate_of: int | None = None
    conflicts_with: tuple[int, ...] = ()


def new_items(result_id: int, objects: Iterable[OutgoingObject], now: datetime, target: str = "") -> list[OutboxItem]:
    """The outbox rows of one result's objects (pending; failed when an object could not be made)."""
    items = []
    for obj in objects:
        made = not obj.error and bool(obj.data)
        items.append(OutboxItem(
            result_id=result_id, created=now, kind=clean(obj.kind, 8), sop_class_uid=clean(obj.sop_class_uid, 64),
            sop_instance_uid=(clean(obj.sop_instance_uid, 64) or None) if made else None,
            transfer_syntax_uid=clean(obj.transfer_syntax_uid, 64), data=bytes(obj.data) if made else b"",
            state="pending" if made else "failed", attempts=0, next_attempt=now,
            last_error="" if made else clean(f"not made: {obj.error or 'no data'}", _MAX_ERROR), target=target))
    return items


def received(s: Session, sop_uid: str, input_sha256: str) -> Received:
    """What the database holds for ``sop_uid`` from the DICOM node: a row scored from the same bytes (a duplicate;
    a row of a file not read is not one: it is tried again), and the rows of other bytes (a conflict)."""
    uid = clean(sop_uid, 64)
    if not uid:
        return Received()
    rows = s.execute(select(ResultRow.id, ResultRow.input_sha256, ResultRow.category)
                     .where(ResultRow.sop_uid == uid, ResultRow.source == "dicom").order_by(ResultRow.id)).all()
    same = [r.id for r in rows if r.input_sha256 == input_sha256 and r.category != CATEGORY_ERROR]
    other = tuple(int(r.id) for r in rows if r.input_sha256 != input_sha256)
    return Received(int(same[0]) if same else None, other)


def item_dict(item: OutboxItem) -> dict[str, Any]:
    """An outbox item as the API and ``dicom-listen --status`` show it (no patient data: the result is named by
    its id)."""
    def iso(t: datetime | None) -> str | None:
        return t.isoformat() if t is not None else None

    return {"id": item.id, "result_id": item.result_id, "kind": item.kind, "state": item.state,
            "created": iso(item.created), "attempts": item.attempts, "last_error": item.last_error,
            "last_attempt": iso(item.last_attempt),
            "next_attempt": iso(item.next_attempt) if item.state == "pending" else None,
            "delivered_at": iso(item.delivered_at), "target": item.target,
            "sop_instance_uid": item.sop_instance_uid or ""}


_LIGHT = (OutboxItem.id, OutboxItem.result_id, OutboxItem.kind, OutboxItem.state, OutboxItem.created,
          OutboxItem.attempts, OutboxItem.last_error, OutboxItem.last_attempt, OutboxItem.next_attempt,
          OutboxItem.delivered_at, OutboxItem.target, OutboxItem.sop_instance_uid)


def forward_states(s: Session, result_ids: Sequence[int]) -> dict[int, dict[str, Any]]:
    """Each listed result's forwarding state (results never forwarded are absent): ``state`` (``failed`` when an
    object was given up, else ``pending`` while one waits, else ``delivered``), ``objects`` and ``delivered``
    (counts), ``attempts`` (the most tries of an object not yet delivered), ``last_error`` (why the last try or the
    giving up failed), ``last_attempt``, ``delivered_at`` and ``target``."""
    if not result_ids:
        return {}
    by_result: dict[int, list[Any]] = {}
    for row in s.execute(select(*_LIGHT).where(OutboxItem.result_id.in_(list(result_ids))).order_by(OutboxItem.id)):
        by_result.setdefault(int(row.result_id), []).append(row)
    out = {}
    for rid, items in by_result.items():
        failed = [i for i in items if i.state == "failed"]
        pending = [i for i in items if i.state == "pending"]
        done = [i for i in items if i.state == "delivered"]
        open_ = failed or pending
        tried = [i.last_attempt for i in items if i.last_attempt is not None]
        out[rid] = {
            "state": "failed" if failed else "pending" if pending else "delivered",
            "objects": len(items),
            "delivered": len(done),
            "attempts": max((i.attempts for i in open_), default=max((i.attempts for i in items), default=0)),
            "last_error": next((i.last_error for i in (failed or sorted(
                pending, key=lambda i: i.last_attempt or i.created, reverse=True)) if i.last_error), ""),
            "last_attempt": max(tried).isoformat() if tried else None,
            "delivered_at": max(i.delivered_at for i in done).isoformat() if done and not open_ else None,
            "target": next((i.target for i in reversed(items) if i.target), ""),
        }
    return out


def _for(target: str | None) -> tuple[Any, ...]:
    return () if target is None else (OutboxItem.target == clean(target, 128),)


def _lock(s: Session, *where: Any) -> None:
    """Lock the items matching ``where`` in id order until the transaction ends, before an UPDATE of them
    (PostgreSQL; SQLite's writers take turns anyway): two nodes sending one outbox then never lock the same items
    in opposite orders, which PostgreSQL would end as a deadlock."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(select(OutboxItem.id).where(*where).order_by(OutboxItem.id).with_for_update()).all()


class Outbox:
    """The outbox of one :class:`~pneumoscan.store.WorklistStore` (its ``outbox`` attribute): what the node's
    sender reads and marks, and what ``--status`` and ``GET /api/v1/outbox`` show. Every call is its own
    transaction."""

    def __init__(self, transaction: Callable[[], contextlib.AbstractContextManager[Session]]) -> None:
        self._transaction = transaction

    # --- the sender ---------------------------------------------------------------------------------------------

    def due(self, limit: int = 100, now: datetime | None = None, *, target: str | None = None
            ) -> builtins.list[DueItem]:
        """Pending items whose next try is due, oldest first (without their bytes); with ``target``, only those
        made for that PACS (``AET@HOST:PORT``: nodes sharing one database may forward to different ones)."""
        now = now or datetime.now(UTC)
        query = (select(OutboxItem.id, OutboxItem.result_id, OutboxItem.kind, OutboxItem.sop_class_uid,
                        OutboxItem.sop_instance_uid, OutboxItem.transfer_syntax_uid, OutboxItem.attempts,
                        OutboxItem.created)
                 .where(OutboxItem.state == "pending", OutboxItem.next_attempt <= now, *_for(target))
                 .order_by(OutboxItem.id).limit(limit))
        with self._transaction() as s:
            return [DueItem(int(r.id), int(r.result_id), r.kind, r.sop_class_uid, r.sop_instance_uid or "",
                            r.transfer_syntax_uid, int(r.attempts), r.created) for r in s.execute(query)]

    def next_due(self, *, target: str | None = None) -> datetime | None:
        """When the next pending item (for ``target``, as in :meth:`due`) is due (None when nothing is pending)."""
        with self._transaction() as s:
            return s.scalar(select(func.min(OutboxItem.next_attempt)).where(OutboxItem.state == "pending",
                                                                            *_for(target)))

    def data(self, item_id: int) -> bytes:
        """An item's Part 10 bytes (``b""`` once delivered, or for an item that is gone)."""
        with self._transaction() as s:
            return bytes(s.scalar(select(OutboxItem.data).where(OutboxItem.id == int(item_id))) or b"")

    def delivered(self, item_id: int, target: str, now: datetime | None = None) -> None:
        """Mark an item stored on ``target``; its bytes are dropped (its UID is kept: the node knows its own)."""
        now = now or datetime.now(UTC)
        with self._transaction() as s:
            s.execute(update(OutboxItem).where(OutboxItem.id == int(item_id)).values(
                state="delivered", delivered_at=now, last_attempt=now, attempts=OutboxItem.attempts + 1,
                data=b"", last_error="", target=clean(target, 128)))

    def retry(self, item_ids: Sequence[int], error: str, next_attempt: datetime, target: str,
              now: datetime | None = None) -> None:
        """Record a failed try of pending items: one more attempt, why, and when to try next."""
        if not item_ids:
            return
        now = now or datetime.now(UTC)
        with self._transaction() as s:
            where = (OutboxItem.id.in_(list(item_ids)), OutboxItem.state == "pending")
            _lock(s, *where)
            s.execute(update(OutboxItem).where(*where)
                      .values(attempts=OutboxItem.attempts + 1, last_error=clean(error, _MAX_ERROR),
                              last_attempt=now, next_attempt=next_attempt, target=clean(target, 128)))

    def all_due(self, now: datetime | None = None) -> int:
        """Make every pending item due now (the PACS answers again: what waited for it goes at once)."""
        now = now or datetime.now(UTC)
        with self._transaction() as s:
            where = (OutboxItem.state == "pending", OutboxItem.next_attempt > now)
            _lock(s, *where)
            return int(s.execute(update(OutboxItem).where(*where).values(next_attempt=now)).rowcount or 0)

    def expire(self, created_before: datetime, why: str) -> builtins.list[int]:
        """Give up the pending items created before ``created_before``: ``failed``, with ``why`` and their last
        error as the reason; their bytes are kept (for a person to send by hand). Returns their ids."""
        with self._transaction() as s:
            old = s.execute(select(OutboxItem.id, OutboxItem.last_error).where(
                OutboxItem.state == "pending", OutboxItem.created < created_before)
                .order_by(OutboxItem.id).with_for_update()).all()
            for item_id, last in old:
                reason = f"{why}; last error: {last}" if last else why
                s.execute(update(OutboxItem).where(OutboxItem.id == item_id)
                          .values(state="failed", last_error=clean(reason, _MAX_ERROR)))
            return [int(i) for i, _ in old]

    def knows(self, sop_instance_uid: str) -> bool:
        """True when this SOP Instance UID is one of the objects the node made (pending, delivered or failed)."""
        uid = clean(sop_instance_uid, 64)
        if not uid:
            return False
        with self._transaction() as s:
            return s.scalar(select(OutboxItem.id).where(OutboxItem.sop_instance_uid == uid).limit(1)) is not None

    # --- reading ------------------------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """How many items are in each state (every state named, 0 when none)."""
        with self._transaction() as s:
            found = dict(s.execute(select(OutboxItem.state, func.count()).group_by(OutboxItem.state)).all())
        return {state: int(found.get(state, 0)) for state in OUTBOX_STATES}

    def items(self, state: str | None = "pending", limit: int = 20, offset: int = 0) -> builtins.list[dict[str, Any]]:
        """Items in ``state`` (None: all), oldest first for ``pending`` (the backlog's head), newest first
        otherwise; as :func:`item_dict` gives them.

        Raises:
            ValueError: an unknown state, a limit outside 1..:data:`~pneumoscan.store.rows.MAX_LIMIT` or a negative offset.
        """
        if state is not None and state not in OUTBOX_STATES:
            raise ValueError(f"state must be one of {', '.join(OUTBOX_STATES)}, got {state!r:.40}")
        check_limit(limit, offset)
        query = select(*_LIGHT)
        if state is not None:
            query = query.where(OutboxItem.state == state)
        order = (OutboxItem.id.asc(),) if state == "pending" else (OutboxItem.id.desc(),)
        with self._transaction() as s:
            return [item_dict(r) for r in s.execute(query.order_by(*order).limit(limit).offset(offset))]

