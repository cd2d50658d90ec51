"""The worklist database: every result kept as its own row, readers' reviews, an audit trail, and retention.

:class:`WorklistStore` is what ``pneumoscan serve`` and ``pneumoscan dicom-listen`` write to and the page reads
from. It is safe to share between threads (each call opens its own session; SQLite calls in one process take
turns, and processes sharing a SQLite file wait for each other's writes).
"""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import logging
import math
import os
import re
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from sqlalchemy import delete, func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, defer, sessionmaker

from pneumoscan.store.engine import describe, make_engine, resolve
from pneumoscan.store.errors import ResultNotFoundError, StoreError
from pneumoscan.store.models import (
    CATEGORY_ERROR,
    CATEGORY_OUT_OF_SCOPE,
    CATEGORY_SCORED,
    CONTEXT_FIELDS,
    AuditEvent,
    Result,
    Review,
)
from pneumoscan.store.rows import (
    MAX_LIMIT,
    ORDERS,
    POSITIVE,
    audit_dict,
    check_limit,
    clean,
    filters,
    order_by,
    result_dict,
    review_dict,
    thumbnail_or_blank,
    utc,
)
from pneumoscan.store.schema import ensure_schema

if TYPE_CHECKING:
    from pneumoscan.io import ImageContext

__all__ = ["MAX_LIMIT", "MAX_NOTE_CHARS", "ORDERS", "POSITIVE", "VERDICTS", "WorklistStore"]

log = logging.getLogger(__name__)

#: What a reader can say about a result.
VERDICTS = ("agree", "disagree")
#: Longest review note kept, in characters.
MAX_NOTE_CHARS = 2000
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: Other spellings of the context fields (:class:`pneumoscan.io.ImageContext`'s names, DICOM-ish names).
_ALIASES = {"patient_age": "age", "patient_sex": "sex", "view_position": "view", "accession_number": "accession",
            "study_instance_uid": "study_uid", "series_instance_uid": "series_uid", "sop_instance_uid": "sop_uid"}
#: Never stored, whoever passes them.
_NEVER = frozenset({"patient_name", "name", "patientname"})
_STR_LIMITS = {"source": 32, "filename_hash": 64, "decision": 32, "model_name": 128, "model_version": 128,
               "client": 128}


def _describe_error(exc: SQLAlchemyError) -> str:
    """The database's own message (never the statement or its parameters, which may name a patient)."""
    orig = getattr(exc, "orig", None)
    return f"{type(orig).__name__}: {orig}" if orig is not None else type(exc).__name__


class WorklistStore:
    """The worklist database, through SQLAlchemy.

    Args:
        url_or_path: a SQLite file (a folder means ``worklist.db`` in it), ``":memory:"``, or any SQLAlchemy URL
            (``postgresql+psycopg://user@host/pneumoscan``). None: ``worklist.db`` in the data folder
            (``$PNEUMOSCAN_DATA_DIR``, else ``~/.local/share/pneumoscan``). A new SQLite file and the folders
            made for it are the owner's only (0600, 0700).

    The schema is created or migrated when the store opens (:mod:`pneumoscan.store.schema`).

    Raises:
        SchemaTooNewError: the database was written by a newer pneumoscan.
        StoreError: the database cannot be opened (message names it, password hidden).
    """

    def __init__(self, url_or_path: str | os.PathLike[str] | None = None) -> None:
        url, path = resolve(url_or_path)
        #: The SQLite file, or None for another database (or one in memory).
        self.path: Path | None = path
        #: The database in words (the file, or the URL without its password).
        self.where = describe(url, self.path)
        self._engine = make_engine(url, self.path)
        # SQLite calls from one process take turns (a single in-memory connection must; for a file it saves
        # waiting on SQLite's own lock). Other databases handle concurrent sessions themselves.
        self._lock: contextlib.AbstractContextManager[Any] = (
            threading.RLock() if url.get_backend_name() == "sqlite" else contextlib.nullcontext())
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        try:
            with self._lock, self._engine.begin() as conn:
                #: The schema version of the database (after any migration).
                self.schema_version = ensure_schema(conn, where=f"the worklist database {self.where}")
        except SQLAlchemyError as exc:
            self._engine.dispose()
            raise StoreError(f"cannot open the worklist database {self.where}: {_describe_error(exc)}") from None
        except BaseException:
            self._engine.dispose()
            raise
        log.info("worklist database: %s (schema version %d)", self.where, self.schema_version)

    def __repr__(self) -> str:
        return f"WorklistStore({self.where!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the database's connections (the store can still be used; it reconnects)."""
        self._engine.dispose()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[Session]:
        """A new session in one transaction: committed at the end of the block, rolled back if it raises."""
        try:
            with self._lock, self._sessions() as session, session.begin():
                yield session
        except SQLAlchemyError as exc:
            raise StoreError(f"worklist database {self.where}: {_describe_error(exc)}") from exc

    # --- writing ------------------------------------------------------------------------------------------------

    def add_result(self, *, input_sha256: str, source: str, filename_hash: str, probability: float | None,
                   decision: str, threshold: float | None, in_scope: bool | None, scope_reason: str, error: str,
                   model_name: str, model_version: str, client: str,
                   context: Mapping[str, Any] | ImageContext | None = None,
                   created: datetime | None = None, thumbnail: str | None = None) -> int:
        """Store one image's result as a new row (never an update: a re-scored image is a new row) with its audit
        row; return its id.

        ``context`` holds the DICOM fields (:data:`~pneumoscan.store.models.CONTEXT_FIELDS`: ``patient_id``,
        ``accession``, ``study_date``, ``age``, ``sex``, ``view``, ``study_uid``, ``series_uid``, ``sop_uid``), as
        a mapping or a :class:`~pneumoscan.io.ImageContext` (whose names, such as ``patient_age`` and
        ``view_position``, are accepted in a mapping too). A patient's name is never stored; other keys are
        ignored. ``error`` non-empty marks a file that
        could not be analysed; ``in_scope`` False an image the scope gate refused. ``created`` defaults to now
        (a naive time is taken as UTC). ``thumbnail``: a small preview of the film as a base64 JPEG, PNG or WebP
        data URI (at most :data:`~pneumoscan.store.rows.MAX_THUMBNAIL_CHARS` characters; anything else is
        dropped with a warning, never the result).

        Raises:
            ValueError: ``input_sha256`` is not 64 hex digits, or ``probability``/``threshold`` is not a number
                in [0, 1], or a result without an error has no probability.
            StoreError: the database refused the write.
        """
        sha = str(input_sha256).strip().lower()
        if not _SHA256.match(sha):
            raise ValueError(f"input_sha256 must be 64 hexadecimal digits (SHA-256 of the input's bytes), "
                             f"got {input_sha256!r:.80}")
        for name, value in (("probability", probability), ("threshold", threshold)):
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value)
                                          and 0.0 <= value <= 1.0):
                raise ValueError(f"{name} must be a number between 0 and 1 or None, got {value!r}")
        error_text = clean(error, newlines=True)
        if error_text:
            category = CATEGORY_ERROR
        elif in_scope is False:
            category = CATEGORY_OUT_OF_SCOPE
        elif probability is None:
            raise ValueError("a result without an error needs a probability")
        else:
            category = CATEGORY_SCORED
        strings = {k: clean(v, _STR_LIMITS[k]) for k, v in (
            ("source", source), ("filename_hash", filename_hash), ("decision", decision),
            ("model_name", model_name), ("model_version", model_version), ("client", client))}
        row = Result(created=utc(created) or datetime.now(UTC), category=category, input_sha256=sha,
                     probability=None if probability is None else float(probability),
                     threshold=None if threshold is None else float(threshold),
                     in_scope=None if in_scope is None else bool(in_scope),
                     scope_reason=clean(scope_reason, 2000), error=error_text[:4000],
                     thumbnail=thumbnail_or_blank(thumbnail), **strings, **self._context(context))
        with self._transaction() as s:
            s.add(row)
            s.flush()
            s.add(AuditEvent(created=row.created, event="result", result_id=row.id, model_name=row.model_name,
                             model_version=row.model_version, client=row.client, input_sha256=sha,
                             detail=f"{row.source or 'unknown source'}: {row.decision or 'ERROR'}"))
            return int(row.id)

    @staticmethod
    def _context(context: Mapping[str, Any] | Any | None) -> dict[str, str]:
        out = dict.fromkeys(CONTEXT_FIELDS, "")
        if context is None:
            return out
        if dataclasses.is_dataclass(context) and not isinstance(context, type):
            items = {f.name: getattr(context, f.name) for f in dataclasses.fields(context)}
        elif isinstance(context, Mapping):
            items = dict(context)
        else:
            raise TypeError(f"context must be a mapping or an ImageContext, got {type(context).__name__}")
        ignored = []
        for key, value in items.items():
            name = _ALIASES.get(str(key).lower(), str(key).lower())
            if name in _NEVER:
                continue
            if name in CONTEXT_FIELDS:
                out[name] = clean(value, CONTEXT_FIELDS[name])
            else:
                ignored.append(str(key))
        if ignored:
            log.debug("context keys not stored: %s", ", ".join(sorted(ignored)))  # names only, never values
        return out

    def review(self, result_id: int, *, verdict: str, note: str = "", reviewer: str) -> dict[str, Any]:
        """Record a reader's review of a result (every review is kept; the latest is the current one) and its
        audit row; return the result as :meth:`list` gives it, with this review as ``review``.

        Raises:
            ValueError: ``verdict`` is not "agree" or "disagree", the note is longer than
                :data:`MAX_NOTE_CHARS`, or ``reviewer`` is empty.
            ResultNotFoundError (a KeyError): no result has this id.
            StoreError: the database refused the write.
        """
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be 'agree' or 'disagree', got {verdict!r:.40}")
        note_text = clean(note, newlines=True)
        if len(note_text) > MAX_NOTE_CHARS:
            raise ValueError(f"the note is {len(note_text):,} characters; at most {MAX_NOTE_CHARS:,} are kept")
        who = clean(reviewer, 128)
        if not who:
            raise ValueError("a review needs a reviewer (the reader's or client's identity)")
        with self._transaction() as s:
            result = s.get(Result, int(result_id))
            if result is None:
                raise ResultNotFoundError(f"no worklist result has id {result_id}; it may have been purged "
                                          "(retention)")
            now = datetime.now(UTC)
            review = Review(result_id=result.id, created=now, verdict=verdict, note=note_text, reviewer=who)
            s.add(review)
            s.add(AuditEvent(created=now, event="review", result_id=result.id, model_name=result.model_name,
                             model_version=result.model_version, client=who, input_sha256=result.input_sha256,
                             detail=verdict + (" with a note" if note_text else "")))
            s.flush()
            n = s.scalar(select(func.count()).select_from(Review).where(Review.result_id == result.id)) or 0
            return result_dict(result, review, int(n))

    def purge(self, older_than_days: float) -> int:
        """Retention: delete the results created more than ``older_than_days`` days ago (with all their
        reviews) and the audit rows older than that; log it in the audit table; return how many results went.

        Raises:
            ValueError: ``older_than_days`` is not positive.
        """
        if not (isinstance(older_than_days, (int, float)) and math.isfinite(older_than_days)
                and older_than_days > 0):
            raise ValueError(f"older_than_days must be a positive number of days, got {older_than_days!r}")
        now = datetime.now(UTC)
        cutoff = now - timedelta(days=float(older_than_days))
        old = select(Result.id).where(Result.created < cutoff)
        with self._transaction() as s:
            n_reviews = s.execute(delete(Review).where(Review.result_id.in_(old))).rowcount or 0
            n_results = s.execute(delete(Result).where(Result.created < cutoff)).rowcount or 0
            n_audit = s.execute(delete(AuditEvent).where(AuditEvent.created < cutoff)).rowcount or 0
            if n_results or n_reviews or n_audit:
                s.add(AuditEvent(created=now, event="purge", client="retention",
                                 detail=f"deleted {n_results} result(s), {n_reviews} review(s) and {n_audit} audit "
                                        f"row(s) older than {older_than_days:g} days (before {cutoff.isoformat()})"))
        if n_results or n_audit:
            log.info("retention: deleted %d result(s), %d review(s), %d audit row(s) older than %g days from %s",
                     n_results, n_reviews, n_audit, older_than_days, self.where)
        return int(n_results)

    # --- reading ------------------------------------------------------------------------------------------------

    def list(self, *, flagged_only: bool = False, unreviewed_only: bool = False, in_scope: bool | None = None,
             borderline: float | None = None, since: datetime | date | None = None,
             until: datetime | date | None = None, limit: int = 200, offset: int = 0, order: str = "risk",
             thumbnails: bool = True) -> builtins.list[dict[str, Any]]:
        """The worklist, highest risk first (``order="risk"``): scored in-scope results by probability
        (descending), then the images not assessed (out of scope), then the files that could not be read; newest
        first within a tie. ``order="newest"`` or ``"oldest"`` lists them by time received instead.

        Filters: ``flagged_only`` (scored in scope and flagged as possible pneumonia), ``borderline`` (scored in
        scope with the probability within this half-width of the result's own threshold, on the probability
        scale: 0.10 is the band threshold +/- 10 points on the 0-100 score), ``unreviewed_only`` (no review yet),
        ``in_scope`` (True or False; errors are neither), ``since`` (created at or after) and ``until`` (created
        before; a date includes that whole day, UTC). Naive times are UTC.

        Returns:
            dicts with ``id``, ``created`` (ISO 8601, UTC), ``source``, ``probability`` (for an image not
            assessed it is kept for audit only and is not a risk), ``decision``, ``flagged``, ``threshold``,
            ``in_scope``, ``scope_reason``, ``error``, ``model_name``, ``model_version``, ``client``,
            ``input_sha256``, ``filename_hash``, the context fields, ``review`` (the latest: ``verdict``,
            ``note``, ``reviewer``, ``reviewed_at``; None when not reviewed), ``n_reviews`` and, with
            ``thumbnails``, ``thumbnail`` (a data URI, or None when none was stored).

        Raises:
            ValueError: ``limit`` outside 1..:data:`MAX_LIMIT`, a negative ``offset``, a ``borderline`` outside
                (0, 0.5], or an unknown ``order``.
        """
        check_limit(limit, offset)
        where = filters(flagged_only=flagged_only, unreviewed_only=unreviewed_only, in_scope=in_scope,
                        borderline=borderline, since=since, until=until)
        query = select(Result).where(*where).order_by(*order_by(order)).limit(limit).offset(offset)
        if not thumbnails:
            query = query.options(defer(Result.thumbnail))
        with self._transaction() as s:
            rows = builtins.list(s.scalars(query))
            latest: dict[int, Review] = {}
            counts: dict[int, int] = {}
            if rows:
                reviews = s.scalars(select(Review).where(Review.result_id.in_([r.id for r in rows]))
                                    .order_by(Review.result_id, Review.created, Review.id))
                for rv in reviews:
                    latest[rv.result_id] = rv
                    counts[rv.result_id] = counts.get(rv.result_id, 0) + 1
            return [result_dict(r, latest.get(r.id), counts.get(r.id, 0), thumbnail=thumbnails) for r in rows]

    def count(self, *, flagged_only: bool = False, unreviewed_only: bool = False, in_scope: bool | None = None,
              borderline: float | None = None, since: datetime | date | None = None,
              until: datetime | date | None = None) -> int:
        """How many results :meth:`list` would give with these filters and no limit."""
        query = select(func.count()).select_from(Result).where(*filters(
            flagged_only=flagged_only, unreviewed_only=unreviewed_only, in_scope=in_scope, borderline=borderline,
            since=since, until=until))
        with self._transaction() as s:
            return int(s.scalar(query) or 0)

    def get(self, result_id: int) -> dict[str, Any]:
        """One result as :meth:`list` gives it.

        Raises:
            ResultNotFoundError (a KeyError): no result has this id.
        """
        with self._transaction() as s:
            result = s.get(Result, int(result_id))
            if result is None:
                raise ResultNotFoundError(f"no worklist result has id {result_id}")
            reviews = list(s.scalars(select(Review).where(Review.result_id == result.id)
                                     .order_by(Review.created, Review.id)))
            return result_dict(result, reviews[-1] if reviews else None, len(reviews))

    def reviews(self, result_id: int) -> builtins.list[dict[str, Any]]:
        """Every review of a result, oldest first (the last is the current one)."""
        with self._transaction() as s:
            return [review_dict(rv) for rv in s.scalars(
                select(Review).where(Review.result_id == int(result_id)).order_by(Review.created, Review.id))]

    def audit(self, limit: int = 200, offset: int = 0, *, event: str | None = None,
              since: datetime | date | None = None, until: datetime | date | None = None
              ) -> builtins.list[dict[str, Any]]:
        """The audit trail, newest first: dicts with ``id``, ``created`` (ISO 8601, UTC), ``event`` ("result",
        "review" or "purge"), ``result_id``, ``model_name``, ``model_version``, ``client``, ``input_sha256`` and
        ``detail``; optionally one kind of ``event`` only, and a time range as in :meth:`list`."""
        check_limit(limit, offset)
        query = select(AuditEvent)
        if event is not None:
            query = query.where(AuditEvent.event == event)
        if since is not None:
            query = query.where(AuditEvent.created >= utc(since))
        if until is not None:
            query = query.where(AuditEvent.created < utc(until, end_of_day=True))
        query = query.order_by(AuditEvent.created.desc(), AuditEvent.id.desc()).limit(limit).offset(offset)
        with self._transaction() as s:
            return [audit_dict(a) for a in s.scalars(query)]
