"""``pneumoscan dicom-listen --status``: the outbox's backlog in words (counts by state, the oldest pending objects
and the latest given up), read from the worklist database; no patient data (a result is named by its row id)."""

from __future__ import annotations

from typing import Any

__all__ = ["outbox_status"]


def _when(text: str | None) -> str:
    return (text or "-")[:19].replace("T", " ")


def _table(items: list[dict[str, Any]], *, next_try: bool) -> list[str]:
    head = ["item", "row", "kind", "created (UTC)", "tries", "next try (UTC)" if next_try else "last try (UTC)",
            "last error"]
    rows = [[str(i["id"]), str(i["result_id"]), i["kind"], _when(i["created"]), str(i["attempts"]),
             _when(i["next_attempt"] if next_try else i["last_attempt"]),
             " ".join((i["last_error"] or "-").split())[:100]] for i in items]
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head) - 1)]
    return ["  " + "  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
            for r in [head, *rows]]


def outbox_status(db: str | None = None, *, limit: int = 10) -> str:
    """The outbox of the worklist database ``db`` (None: the default file): how many SR/SC objects are pending,
    delivered and failed, the ``limit`` oldest pending (tries, next try, last error) and the ``limit`` latest
    failed (why).

    Raises:
        StoreError: the database cannot be opened, or there is no SQLite file there (none is made to say so).
    """
    from pneumoscan.store import StoreError, WorklistStore
    from pneumoscan.store.engine import resolve

    _, path = resolve(db)
    if path is not None and not path.is_file():
        raise StoreError(f"no worklist database at {path}; give the node's --db")
    with WorklistStore(db) as store:
        counts = store.outbox.counts()
        pending = store.outbox.items("pending", limit=limit)
        failed = store.outbox.items("failed", limit=limit)
        where = store.where
    lines = [f"outbox of {where}: {counts['pending']} pending, {counts['delivered']} delivered, "
             f"{counts['failed']} failed (SR and SC objects for the PACS)"]
    if pending:
        lines += [f"oldest pending ({len(pending)} of {counts['pending']}):", *_table(pending, next_try=True)]
    if failed:
        lines += [f"failed, newest first ({len(failed)} of {counts['failed']}):", *_table(failed, next_try=False)]
    if not pending:
        lines.append("nothing waits for the PACS")
    return "\n".join(lines)
