"""Every analysed upload into the worklist database (:class:`pneumoscan.store.WorklistStore`): its result or its
error, the SHA-256 of its bytes, its file name only as a hash (:func:`~pneumoscan.serve.security.log_id`), the
model, the client (the reader's name with per-reader tokens, the shared token's short hash, or ``local``) and the
film's ``thumbnail`` (the small data URI the analysis made, for the worklist's rows and the page's cards after a
reload). The same input sent again (same SHA-256, same model, same answer) is one result: its row's count goes up
(the entry's ``times_received``) and an audit row records the repeat.

A database failure never costs the client its result: the entry then says ``worklist_id`` None and
``worklist_error`` (why, in a few words: never the database's own message, which may quote stored values), and
the server logs it.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING, Any

from pneumoscan.serve.security import log_id
from pneumoscan.store import StoreError

if TYPE_CHECKING:
    from pneumoscan.result import Result
    from pneumoscan.serve.state import ServerState

__all__ = ["record"]

log = logging.getLogger("pneumoscan.serve")


def _stored_error(name: str, message: str) -> str:
    """The error without the client's file name (it may hold a patient's name): the name as its hash."""
    if message.startswith(name + ": "):
        message = message[len(name) + 2:]
    return message.replace(name, log_id(name)) if len(name) >= 3 else message


#: What a database's error says, and how the client is told it (the first that matches; else a database error).
_REASONS = (
    (("readonly", "read-only", "read only"), "the worklist database is read-only"),
    (("disk is full", "no space", "disk full", "quota"), "the worklist database's disk is full"),
    (("locked", "busy", "timeout", "timed out"), "the worklist database was busy"),
    (("unable to open", "could not connect", "connection", "server closed"), "the worklist database is unreachable"),
)


def _reason(exc: Exception) -> str:
    """Why an upload was not stored, for the client (the page shows it on its card); the log has the details."""
    if not isinstance(exc, StoreError):
        return f"its result could not be stored ({type(exc).__name__}); see the server log"
    text = str(exc).lower().rsplit("error: ", 1)[-1]  # the driver's words, not the database's name or path
    said = next((words for keys, words in _REASONS if any(k in text for k in keys)), "the worklist database failed")
    return f"{said}; see the server log"


def record(state: ServerState, name: str, data: bytes, result: Result, entry: dict[str, Any],
           client: str | None = None) -> None:
    """Store one upload's :class:`~pneumoscan.result.Result` (with the entry's ``thumbnail``) and set
    ``entry["worklist_id"]`` and ``entry["times_received"]``; the stored row names the file only by its hash, and a
    stored error never names it. ``client``: who sent it (default ``state.auth.client_id``).

    Blocking (a database write): call it in a worker thread.
    """
    if result.error:
        result = result.replace(error=_stored_error(name, result.error))
    try:
        entry["worklist_id"], entry["times_received"] = state.store.add_or_count(
            result, input_sha256=hashlib.sha256(data).hexdigest(), source="upload", filename_hash=log_id(name),
            client=client or state.auth.client_id, thumbnail=entry.get("thumbnail") if result.read else None)
    except (StoreError, ValueError, TypeError) as exc:
        log.error("%s: not recorded in the worklist database (%s)", log_id(name), exc)
        entry["worklist_id"] = None
        entry["worklist_error"] = _reason(exc)
