"""Every analysed upload into the worklist database (:class:`pneumoscan.store.WorklistStore`): its result or its
error, the SHA-256 of its bytes, its file name only as a hash (:func:`~pneumoscan.serve.security.log_id`), the
model, the client (the token's short hash, or ``local``) and the film's ``thumbnail`` (the small data URI the
analysis made, for the worklist's rows and the page's cards after a reload).

A database failure never costs the client its result: the entry then says ``worklist_id`` None and
``worklist_error``, and the server logs it.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from pneumoscan.serve.security import log_id
from pneumoscan.store import CONTEXT_FIELDS, StoreError

__all__ = ["CONTEXT_KEYS", "record"]

log = logging.getLogger("pneumoscan.serve")

#: Context keys looked for in a result entry (under ``context``, or at its top level).
CONTEXT_KEYS = (*CONTEXT_FIELDS, "patient_age", "patient_sex", "view_position")


def _context(entry: dict[str, Any]) -> dict[str, Any]:
    nested = entry.get("context")
    source = nested if isinstance(nested, dict) else entry
    return {k: source[k] for k in CONTEXT_KEYS if source.get(k) not in (None, "")}


def _stored_error(name: str, message: str) -> str:
    """The error without the client's file name (it may hold a patient's name): the name as its hash."""
    if message.startswith(name + ": "):
        message = message[len(name) + 2:]
    return message.replace(name, log_id(name)) if len(name) >= 3 else message


def record(state: Any, name: str, data: bytes, entry: dict[str, Any]) -> None:
    """Store one upload's entry (a result, or ``ok`` False with its ``error``) and set ``entry["worklist_id"]``.

    Blocking (a database write): call it in a worker thread.
    """
    predictor = state.predictor
    ok = bool(entry.get("ok"))
    try:
        entry["worklist_id"] = state.store.add_result(
            input_sha256=hashlib.sha256(data).hexdigest(), source="upload", filename_hash=log_id(name),
            probability=entry.get("probability") if ok else None,
            decision=str(entry.get("decision") or "") if ok else "ERROR",
            threshold=entry.get("threshold") if ok else None,
            in_scope=entry.get("in_scope") if ok else None,
            scope_reason=str(entry.get("scope_reason") or "") if ok else "",
            error="" if ok else _stored_error(name, str(entry.get("error") or "could not be analysed")),
            model_name=predictor.model_name, model_version=predictor.version, client=state.auth.client_id,
            context=_context(entry), thumbnail=entry.get("thumbnail") if ok else None)
    except (StoreError, ValueError, TypeError) as exc:
        log.error("%s: not recorded in the worklist database (%s)", log_id(name), exc)
        entry["worklist_id"] = None
        entry["worklist_error"] = "this result was not saved to the worklist database; see the server log"
