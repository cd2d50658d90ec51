"""How the worklist database's rows are read and written: text cleaning, times, the thumbnail check, the list
filters (flagged, borderline band, unreviewed, scope, time range) and orders, and rows as plain dicts."""

from __future__ import annotations

import logging
import math
import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import case, exists, func

from pneumoscan.constants import CAUSE_WORDS, CLASS_NAMES
from pneumoscan.metrics import decision_words, score_100
from pneumoscan.store.models import (
    CATEGORY_ERROR,
    CATEGORY_SCORED,
    CONTEXT_FIELDS,
    AuditEvent,
    ResultRow,
    Review,
)

__all__ = ["MAX_LIMIT", "MAX_THUMBNAIL_CHARS", "ORDERS", "audit_dict", "check_borderline", "check_limit", "clean",
           "filters", "order_by", "result_dict", "review_dict", "thumbnail_or_blank", "utc"]

log = logging.getLogger("pneumoscan.store")

#: Most rows one list or audit call returns.
MAX_LIMIT = 1000
#: Longest thumbnail kept, in characters of its data URI (a 128 px JPEG is about 4-8 kB of base64).
MAX_THUMBNAIL_CHARS = 96_000
#: The orders a worklist can be listed in: by risk (the triage order), or by time received.
ORDERS = ("risk", "newest", "oldest")

POSITIVE = CLASS_NAMES[1]
_THUMBNAIL = re.compile(r"^data:image/(jpeg|png|webp);base64,[A-Za-z0-9+/]+={0,2}$")
#: Slack for a probability exactly on the band's edge (0.6 - 0.5 is 0.09999999999999998 in floating point).
_BAND_SLACK = 1e-9


def clean(value: Any, limit: int | None = None, *, newlines: bool = False) -> str:
    """Printable text (newlines too when asked), stripped, at most ``limit`` characters."""
    text = "" if value is None else str(value)
    text = "".join(ch for ch in text if ch.isprintable() or (newlines and ch == "\n")).strip()
    return text[:limit] if limit else text


def utc(moment: datetime | date | None, *, end_of_day: bool = False) -> datetime | None:
    """An aware UTC datetime; a naive one is taken as UTC; a date is its midnight (the next one with
    ``end_of_day``, so that ``until=<date>`` includes that day)."""
    if moment is None:
        return None
    if not isinstance(moment, datetime):
        moment = datetime.combine(moment + timedelta(days=1) if end_of_day else moment, time(), UTC)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def check_limit(limit: int, offset: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
    if offset < 0:
        raise ValueError(f"offset must be 0 or more, got {offset}")


def check_borderline(band: float | None) -> None:
    """A borderline band is a half-width on the probability scale, above 0 and at most 0.5 (or None: no band)."""
    if band is None:
        return
    if not (isinstance(band, (int, float)) and math.isfinite(band) and 0.0 < band <= 0.5):
        raise ValueError(f"borderline must be a half-width above 0 and at most 0.5 on the probability scale "
                         f"(0.10 is 10 points on the 0-100 score), got {band!r}")


def thumbnail_or_blank(value: Any) -> str:
    """``value`` when it is a base64 JPEG, PNG or WebP data URI of at most :data:`MAX_THUMBNAIL_CHARS`; else
    ``""`` (logged: a bad thumbnail never costs a result its row)."""
    if value is None or value == "":
        return ""
    if isinstance(value, str) and len(value) <= MAX_THUMBNAIL_CHARS and _THUMBNAIL.match(value):
        return value
    size = len(value) if isinstance(value, str) else type(value).__name__
    log.warning("a thumbnail was not stored: not a base64 JPEG/PNG/WebP data URI of at most %d characters (%s)",
                MAX_THUMBNAIL_CHARS, size)
    return ""


def filters(*, flagged_only: bool = False, unreviewed_only: bool = False, in_scope: bool | None = None,
            borderline: float | None = None, since: datetime | date | None = None,
            until: datetime | date | None = None, cause: str | None = None) -> list[Any]:
    """The WHERE clauses of a worklist query (see :meth:`WorklistStore.list`)."""
    check_borderline(borderline)
    where: list[Any] = []
    if cause is not None:
        if cause not in CAUSE_WORDS:
            raise ValueError(f"cause must be one of {', '.join(CAUSE_WORDS)}, got {cause!r:.40}")
        where.append(ResultRow.cause == cause)
    if flagged_only:
        where += [ResultRow.category == CATEGORY_SCORED, ResultRow.decision == POSITIVE]
    if borderline is not None:
        where += [ResultRow.category == CATEGORY_SCORED, ResultRow.threshold.is_not(None),
                  func.abs(ResultRow.probability - ResultRow.threshold) <= float(borderline) + _BAND_SLACK]
    if unreviewed_only:
        where.append(~exists().where(Review.result_id == ResultRow.id))
    if in_scope is not None:
        where.append(ResultRow.in_scope.is_(bool(in_scope)))
    if since is not None:
        where.append(ResultRow.created >= utc(since))
    if until is not None:
        where.append(ResultRow.created < utc(until, end_of_day=True))
    return where


def order_by(order: str) -> tuple[Any, ...]:
    """The ORDER BY of a worklist query: ``"risk"`` (scored by probability, then not assessed, then not read;
    newest first among equals), ``"newest"`` or ``"oldest"`` (by time received)."""
    if order == "risk":
        return (ResultRow.category.asc(),
                case((ResultRow.category == CATEGORY_SCORED, ResultRow.probability), else_=None).desc(),
                ResultRow.id.desc())
    if order == "newest":
        return (ResultRow.created.desc(), ResultRow.id.desc())
    if order == "oldest":
        return (ResultRow.created.asc(), ResultRow.id.asc())
    raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r:.40}")


def review_dict(review: Review) -> dict[str, Any]:
    return {"verdict": review.verdict, "note": review.note, "reviewer": review.reviewer,
            "reviewed_at": review.created.isoformat()}


def result_dict(r: ResultRow, latest: Review | None, n_reviews: int, *, thumbnail: bool = True,
                forward: dict[str, Any] | None = None) -> dict[str, Any]:
    """A stored row as the API gives it: the keys of :meth:`pneumoscan.result.Result.to_dict` (the same names and
    shape as ``POST /api/v1/predict``'s results: ``context`` nested), plus what the store knows: ``id``,
    ``created``, ``source`` (``upload``, ``dicom``, ``cli``), ``client``, ``input_sha256``, ``filename_hash``,
    ``review``, ``n_reviews``, ``uid_conflict`` (its SOP Instance UID came to the DICOM node before with other
    pixels), ``times_received`` (the same input sent again raises it: :mod:`pneumoscan.store.studies`), ``forward`` (its SR/SC's way to the PACS, :func:`pneumoscan.store.outbox.forward_states`; None when
    not forwarded) and, with ``thumbnail``, ``thumbnail``."""
    read = r.category != CATEGORY_ERROR
    assessed = r.category == CATEGORY_SCORED and r.probability is not None
    decision = r.decision if read and r.decision != "ERROR" else ""  # rows written by earlier versions said ERROR
    out = {
        "id": r.id,
        "created": r.created.isoformat(),
        "source": r.source,
        "ok": read,
        "probability": r.probability,
        "score": score_100(r.probability) if assessed else None,
        "threshold": r.threshold,
        "score_threshold": None if r.threshold is None else score_100(r.threshold),
        "decision": decision,
        "decision_text": decision_words(decision),
        "positive": (r.category == CATEGORY_SCORED and decision == POSITIVE) if read else None,
        "in_scope": r.in_scope,
        "scope_reason": r.scope_reason,
        "scope_caution": (r.scope_caution or "") if r.category == CATEGORY_SCORED else "",
        "cause": r.cause or "",
        "cause_text": CAUSE_WORDS.get(r.cause or "", ""),
        "cause_score": score_100(r.cause_probability) if r.cause and r.cause_probability is not None else None,
        "cause_probability": r.cause_probability if r.cause else None,
        "cause_threshold": r.cause_threshold,
        "score_calibration": r.score_calibration or "",
        "error": r.error,
        "note": "",
        "model_name": r.model_name,
        "model_version": r.model_version,
        "context": {name: getattr(r, name) for name in CONTEXT_FIELDS},
        "client": r.client,
        "input_sha256": r.input_sha256,
        "filename_hash": r.filename_hash,
        "review": review_dict(latest) if latest is not None else None,
        "n_reviews": n_reviews,
        "uid_conflict": bool(r.uid_conflict),
        "times_received": int(r.times_received or 1),
        "forward": forward,
    }
    if thumbnail:
        out["thumbnail"] = r.thumbnail or None
    return out


def audit_dict(a: AuditEvent) -> dict[str, Any]:
    return {"id": a.id, "created": a.created.isoformat(), "event": a.event, "result_id": a.result_id,
            "model_name": a.model_name, "model_version": a.model_version, "client": a.client,
            "input_sha256": a.input_sha256, "detail": a.detail}
