"""The worklist database: every result kept as its own row, readers' reviews, an audit trail, and retention.

:class:`WorklistStore` is what ``pneumoscan serve`` and ``pneumoscan dicom-listen`` write to and the page reads
from. It is safe to share between threads (each call opens its own session; SQLite calls in one process take
turns, and processes sharing a SQLite file wait for each other's writes).
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import math
import os
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from pneumoscan.store.engine import describe, describe_error, make_engine, resolve
from pneumoscan.store.errors import ResultNotFoundError, StoreError
from pneumoscan.store.models import AuditEvent, ResultRow, Review
from pneumoscan.store.outbox import Outbox, OutgoingObject, Received, forward_states
from pneumoscan.store.outbox import received as find_received
from pneumoscan.store.rows import (
    MAX_LIMIT,
    ORDERS,
    POSITIVE,
    audit_dict,
    check_limit,
    clean,
    filters,
    result_dict,
    review_dict,
    utc,
)
from pneumoscan.store.schema import ensure_schema
from pneumoscan.store.studies import (
    count_repeat,
    find_by_key,
    find_repeat,
    listing,
    received_key,
    repeat_key,
    study_fields,
)
from pneumoscan.store.writes import insert, insert_once, new_row, purge_before

if TYPE_CHECKING:
    from pneumoscan.result import Result

__all__ = ["MAX_LIMIT", "MAX_NOTE_CHARS", "ORDERS", "POSITIVE", "VERDICTS", "WorklistStore"]

log = logging.getLogger(__name__)

#: What a reader can say about a result.
VERDICTS = ("agree", "disagree")
#: Longest review note kept, in characters.
MAX_NOTE_CHARS = 2000


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
            raise StoreError(f"cannot open the worklist database {self.where}: {describe_error(exc)}") from None
        except BaseException:
            self._engine.dispose()
            raise
        #: The DICOM node's SR and SC until the PACS has them (:class:`~pneumoscan.store.outbox.Outbox`).
        self.outbox = Outbox(self._transaction)
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
            raise StoreError(f"worklist database {self.where}: {describe_error(exc)}") from exc

    # --- writing ------------------------------------------------------------------------------------------------

    def add(self, result: Result, *, input_sha256: str, source: str, filename_hash: str = "", client: str = "",
            created: datetime | None = None, thumbnail: str | None = None,
            outbox: Sequence[OutgoingObject] = (), forward_to: str = "", uid_conflict: bool = False) -> int:
        """Store one :class:`~pneumoscan.result.Result` as a new row (never an update: a re-scored image is a new row)
        with its audit row; return its id. The row keeps what the result says, as it says it: its probability,
        decision, threshold, scope verdict, error, model and DICOM context (:data:`CONTEXT_FIELDS`, the result's own
        names; a patient's name is never stored).

        ``input_sha256``: the SHA-256 of the input's bytes; ``source``: where it came from (``"upload"``, ``"dicom"``,
        ``"cli"``); ``filename_hash``: the client's file name only as a hash; ``client``: who sent it. ``created``
        defaults to now (a naive time is taken as UTC). ``thumbnail``: a small preview of the film as a base64 JPEG,
        PNG or WebP data URI (at most :data:`~pneumoscan.store.rows.MAX_THUMBNAIL_CHARS` characters; anything else is
        dropped with a warning, never the result). ``outbox``: the DICOM objects to send to the PACS ``forward_to``
        for this result, written in the same transaction (:mod:`pneumoscan.store.outbox`). ``uid_conflict``: its SOP
        Instance UID was received before with other bytes.

        Raises:
            ValueError: ``input_sha256`` is not 64 hex digits.
            StoreError: the database refused the write.
        """
        row = new_row(result, input_sha256=input_sha256, source=source, filename_hash=filename_hash,
                      client=client, created=created, thumbnail=thumbnail, uid_conflict=uid_conflict)
        with self._transaction() as s:
            return insert(s, row, outbox, forward_to)

    def add_received(self, result: Result, *, input_sha256: str, filename_hash: str = "", client: str = "",
                     outbox: Sequence[OutgoingObject] = (), forward_to: str = "") -> tuple[int, Received]:
        """What the DICOM node stores for an image it received (``source`` "dicom"), in one transaction: when this
        SOP Instance UID (the result's context) was already scored from the same bytes, nothing (the existing
        row's id is returned); else a new row, with its ``outbox`` objects, marked ``uid_conflict`` when the UID
        came before with other bytes. Returns ``(row id, what was known before)``.

        Raises:
            ValueError: ``input_sha256`` is not 64 hex digits.
            StoreError: the database refused the write.
        """
        row = new_row(result, input_sha256=input_sha256, source="dicom", filename_hash=filename_hash,
                      client=client)
        with self._transaction() as s:
            known = find_received(s, row.sop_uid, row.input_sha256)
            if known.duplicate_of is not None:
                return known.duplicate_of, known
            row.uid_conflict = bool(known.conflicts_with)
            row.repeat_key = received_key(row)
            rid = insert_once(s, row, outbox, forward_to)
            if rid is None:  # another node stored these very bytes under this UID a moment ago: that row it is
                known = find_received(s, row.sop_uid, row.input_sha256)
                if known.duplicate_of is None:
                    raise StoreError(f"worklist database {self.where}: a received image's row was neither "
                                     "stored nor found")
                return known.duplicate_of, known
            return rid, known

    def add_or_count(self, result: Result, *, input_sha256: str, source: str, filename_hash: str = "",
                     client: str = "", thumbnail: str | None = None) -> tuple[int, int]:
        """:meth:`add`, unless the same input (``input_sha256``) was already answered the same way by the same
        model: then that row's ``times_received`` goes up and a ``repeat`` audit row (``client``: who sent it) is
        written instead (:mod:`pneumoscan.store.studies`). Returns ``(row id, times received)``; raises as
        :meth:`add`."""
        row = new_row(result, input_sha256=input_sha256, source=source, filename_hash=filename_hash,
                      client=client, thumbnail=thumbnail)
        with self._transaction() as s:
            existing = find_repeat(s, row)
            if existing is None:
                row.repeat_key = repeat_key(row)
                rid = insert_once(s, row)
                if rid is not None:
                    return rid, 1
                # Another server stored the same input a moment ago (the key is taken): count on its row.
                existing = find_by_key(s, str(row.repeat_key))
                if existing is None:
                    raise StoreError(f"worklist database {self.where}: a repeated input's row was neither stored "
                                     "nor found")
            return int(existing.id), count_repeat(s, existing, row, datetime.now(UTC))

    def received(self, sop_uid: str, input_sha256: str) -> Received:
        """What the database knows of a SOP Instance UID the DICOM node receives (:func:`.outbox.received`)."""
        with self._transaction() as s:
            return find_received(s, sop_uid, str(input_sha256).strip().lower())

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
            result = s.get(ResultRow, int(result_id))
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
            return result_dict(result, review, int(n), forward=forward_states(s, [result.id]).get(result.id))

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
        with self._transaction() as s:
            n_results, n_reviews, n_audit = purge_before(s, cutoff, f"{older_than_days:g} days", now)
        if n_results or n_audit:
            log.info("retention: deleted %d result(s), %d review(s), %d audit row(s) older than %g days from %s",
                     n_results, n_reviews, n_audit, older_than_days, self.where)
        return int(n_results)

    # --- reading ------------------------------------------------------------------------------------------------

    def list(self, *, flagged_only: bool = False, unreviewed_only: bool = False, in_scope: bool | None = None,
             borderline: float | None = None, since: datetime | date | None = None,
             until: datetime | date | None = None, limit: int = 200, offset: int = 0, order: str = "risk",
             thumbnails: bool = True, cause: str | None = None) -> builtins.list[dict[str, Any]]:
        """The worklist, highest risk first (``order="risk"``): scored in-scope results by probability
        (descending), then the images not assessed (out of scope), then the files that could not be read; newest
        first within a tie; the films of one study (StudyInstanceUID, else accession) together, the study placed by
        its riskiest film (:mod:`pneumoscan.store.studies`). ``order="newest"`` or ``"oldest"`` lists them by time
        received instead.

        Filters: ``flagged_only`` (scored in scope and flagged as possible pneumonia), ``borderline`` (scored in
        scope with the probability within this half-width of the result's own threshold, on the probability
        scale: 0.10 is the band threshold +/- 10 points on the 0-100 score), ``unreviewed_only`` (no review yet),
        ``in_scope`` (True or False; errors are neither), ``cause`` (``BACTERIAL`` or ``VIRAL``: flagged films with that
        pattern), ``since`` (created at or after) and ``until`` (created
        before; a date includes that whole day, UTC). Naive times are UTC.

        Returns:
            dicts with ``id``, ``created`` (ISO 8601, UTC), ``source``, ``probability`` (for an image not
            assessed it is kept for audit only and is not a risk), ``decision``, ``flagged``, ``threshold``,
            ``in_scope``, ``scope_reason``, ``error``, ``model_name``, ``model_version``, ``client``,
            ``input_sha256``, ``filename_hash``, the context fields, ``review`` (the latest: ``verdict``,
            ``note``, ``reviewer``, ``reviewed_at``; None when not reviewed), ``n_reviews``, ``times_received``,
            ``study_key`` and ``study_size`` (:func:`~pneumoscan.store.studies.study_fields`) and, with
            ``thumbnails``, ``thumbnail`` (a data URI, or None when none was stored).

        Raises:
            ValueError: ``limit`` outside 1..:data:`MAX_LIMIT`, a negative ``offset``, a ``borderline`` outside
                (0, 0.5], or an unknown ``order``.
        """
        check_limit(limit, offset)
        where = filters(flagged_only=flagged_only, unreviewed_only=unreviewed_only, in_scope=in_scope,
                        borderline=borderline, since=since, until=until, cause=cause)
        query = listing(where, order, limit=limit, offset=offset, thumbnails=thumbnails)
        with self._transaction() as s:
            found = builtins.list(s.execute(query))
            rows = [r for r, _, _ in found]
            latest: dict[int, Review] = {}
            counts: dict[int, int] = {}
            if rows:
                reviews = s.scalars(select(Review).where(Review.result_id.in_([r.id for r in rows]))
                                    .order_by(Review.result_id, Review.created, Review.id))
                for rv in reviews:
                    latest[rv.result_id] = rv
                    counts[rv.result_id] = counts.get(rv.result_id, 0) + 1
            forwarded = forward_states(s, [r.id for r in rows])
            return [{**result_dict(r, latest.get(r.id), counts.get(r.id, 0), thumbnail=thumbnails,
                                   forward=forwarded.get(r.id)), **study_fields(key, size)} for r, key, size in found]

    def count(self, *, flagged_only: bool = False, unreviewed_only: bool = False, in_scope: bool | None = None,
              borderline: float | None = None, since: datetime | date | None = None,
              until: datetime | date | None = None, cause: str | None = None) -> int:
        """How many results :meth:`list` would give with these filters and no limit."""
        query = select(func.count()).select_from(ResultRow).where(*filters(
            flagged_only=flagged_only, unreviewed_only=unreviewed_only, in_scope=in_scope, borderline=borderline,
            since=since, until=until, cause=cause))
        with self._transaction() as s:
            return int(s.scalar(query) or 0)

    def get(self, result_id: int) -> dict[str, Any]:
        """One result as :meth:`list` gives it.

        Raises:
            ResultNotFoundError (a KeyError): no result has this id.
        """
        with self._transaction() as s:
            result = s.get(ResultRow, int(result_id))
            if result is None:
                raise ResultNotFoundError(f"no worklist result has id {result_id}")
            reviews = list(s.scalars(select(Review).where(Review.result_id == result.id)
                                     .order_by(Review.created, Review.id)))
            return result_dict(result, reviews[-1] if reviews else None, len(reviews),
                               forward=forward_states(s, [result.id]).get(result.id))

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
