"""The worklist database's tables (SQLAlchemy 2.0 declarative models).

* ``worklist_results``: one row per scored (or refused) image; a re-scored image is a new row, never an update
  (only its ``times_received`` goes up when the very same input gets the same answer from the same model again).
* ``worklist_reviews``: every reader's review of a result (the latest one is the current one).
* ``audit_log``: one row per result, review and retention purge: when, what, which model and version, which
  client, and the input's SHA-256.
* ``dicom_outbox``: the DICOM node's SR and SC of each result (DICOM Part 10 bytes) and whether they reached the
  PACS: written in the result's own transaction, sent by the node's sender thread, kept across restarts.
* ``schema_version``: the schema versions applied, one row each (:mod:`pneumoscan.store.schema`); alembic's own
  ``alembic_version`` says the current revision, this table is kept for pneumoscan releases from before alembic.

A change to these tables needs a new alembic revision as well (:mod:`pneumoscan.store.schema` says how);
``tests/test_store_schema.py`` fails while the revisions and the models disagree.

Times are stored as naive UTC (SQLite has no time zones) and come back time-zone aware (:class:`UTCDateTime`).
The patient's name is never stored: only the identifiers a PACS worklist needs.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

__all__ = ["CATEGORY_ERROR", "CATEGORY_OUT_OF_SCOPE", "CATEGORY_SCORED", "CONTEXT_FIELDS", "OUTBOX_STATES",
           "AuditEvent", "Base", "OutboxItem", "ResultRow", "Review", "SchemaVersion", "UTCDateTime"]

#: Worklist order: scored in-scope images (by probability), then images not assessed, then files not read.
CATEGORY_SCORED, CATEGORY_OUT_OF_SCOPE, CATEGORY_ERROR = 0, 1, 2
#: An outbox item's states: waiting to be sent (or to be tried again), stored on the PACS, given up (with why).
OUTBOX_STATES = ("pending", "delivered", "failed")

#: The DICOM context kept with a result (:data:`pneumoscan.result.CONTEXT_KEYS`, the same names everywhere), and the
#: longest value kept of each (DICOM's own limits, or near them).
CONTEXT_FIELDS: dict[str, int] = {
    "patient_id": 64, "accession": 64, "study_date": 16, "age": 16, "sex": 16, "view": 16,
    "study_uid": 64, "series_uid": 64, "sop_uid": 64,
}


class UTCDateTime(TypeDecorator[datetime]):
    """A time stored as naive UTC and read back as an aware UTC :class:`~datetime.datetime`; a naive value
    given to it is taken to be UTC already."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    pass


class SchemaVersion(Base):
    """One row per schema version applied to this database; the highest is the database's version."""

    __tablename__ = "schema_version"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    applied_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    description: Mapped[str] = mapped_column(String(200), nullable=False, default="")


class ResultRow(Base):
    """One image's result: score, decision, scope, error, model, client, input hash and DICOM context."""

    __tablename__ = "worklist_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)
    #: 0 scored in scope, 1 out of scope (not assessed), 2 not read (error): the worklist's first sort key.
    category: Mapped[int] = mapped_column(SmallInteger, nullable=False)
    input_sha256: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    #: Where the image came from: "upload" (the web API), "dicom" (the DICOM node), "cli".
    source: Mapped[str] = mapped_column(String(32), nullable=False, default="")
    #: The client's file name, only as a hash (it may hold a patient's name).
    filename_hash: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    probability: Mapped[float | None] = mapped_column(Float, nullable=True)
    decision: Mapped[str] = mapped_column(String(32), nullable=False, default="")
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    in_scope: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    scope_reason: Mapped[str] = mapped_column(Text, nullable=False, default="")
    error: Mapped[str] = mapped_column(Text, nullable=False, default="")
    model_name: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    model_version: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    client: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    patient_id: Mapped[str] = mapped_column(String(CONTEXT_FIELDS["patient_id"]), nullable=False, default="",
                                            index=True)
    accession: Mapped[str] = mapped_column(String(CONTEXT_FIELDS["accession"]), nullable=False, default="",
                                           index=True)
    study_date: Mapped[str] = mapped_column(String(CONTEXT_FIELDS["study_date"]), nullable=False, default="")
    age: Mapped[str] = mapped_column(String(CONTEXT_FIELDS["age"]), nullable=False, default="")
    sex: Mapped[str] = mapped_column(String(CONTEXT_FIELDS["sex"]), nullable=False, default="")
    view: Mapped[str] = mapped_column(String(CONTEXT_FIELDS["view"]), nullable=False, default="")
    study_uid: Mapped[str] = mapped_column(String(CONTEXT_FIELDS["study_uid"]), nullable=False, default="",
                                           index=True)
    series_uid: Mapped[str] = mapped_column(String(CONTEXT_FIELDS["series_uid"]), nullable=False, default="")
    #: Indexed (schema version 5): the DICOM node looks a received SOP Instance UID up before scoring it.
    sop_uid: Mapped[str] = mapped_column(String(CONTEXT_FIELDS["sop_uid"]), nullable=False, default="", index=True)
    #: A small preview of the film (a ``data:image/jpeg;base64,...`` URI, about 128 px on its long side) for the
    #: worklist's rows and the page's cards; ``""`` when none was made (errors, the DICOM node, older rows).
    #: Added in schema version 2.
    thumbnail: Mapped[str] = mapped_column(Text, nullable=False, default="")
    #: A flagged film's cause (``BACTERIAL``/``VIRAL``; ``""`` for every other film, and for rows from before the
    #: model had a cause output), P(viral) and the cause threshold. Added in schema version 3.
    cause: Mapped[str] = mapped_column(String(16), nullable=False, default="")
    cause_probability: Mapped[float | None] = mapped_column(Float, nullable=True)
    cause_threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    #: Where the model that answered had its score calibrated, in words (:attr:`ModelIdentity.calibration`);
    #: ``""`` for rows from before. Added in schema version 4.
    score_calibration: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    #: The DICOM node received this SOP Instance UID before with other pixels (another input SHA-256): this row is
    #: a second result under one UID, for a person to sort out. Added in schema version 5.
    uid_conflict: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False, server_default=false())
    #: The scope gate's caution on a film it scored although it is a chest radiograph unlike the training films
    #: (:data:`~pneumoscan.constants.UNFAMILIAR_CAUTION`); ``""`` otherwise and for rows from before. Added in
    #: schema version 6.
    scope_caution: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    #: How many times this very input (the same SHA-256, to the same model) was received: an upload sent again
    #: raises the count (and writes a "repeat" audit row) instead of making a second row. 1 for rows from before.
    #: Added in schema version 7.
    times_received: Mapped[int] = mapped_column(Integer, nullable=False, default=1, server_default="1")
    #: What makes a later input a repeat of this row, as a SHA-256 (:func:`pneumoscan.store.studies.repeat_key`),
    #: unique: two servers storing the same input at the same moment make one row. NULL for rows stored with
    #: :meth:`~pneumoscan.store.WorklistStore.add` (always a new row) and rows from before. Added in schema version 8.
    repeat_key: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True, unique=True)

    __table_args__ = (Index("ix_worklist_results_order", "category", "probability"),)


class Review(Base):
    """A reader's verdict on a result ("agree" or "disagree") with an optional note; every one is kept."""

    __tablename__ = "worklist_reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("worklist_results.id", ondelete="CASCADE"), nullable=False,
                                           index=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)
    verdict: Mapped[str] = mapped_column(String(16), nullable=False)
    note: Mapped[str] = mapped_column(Text, nullable=False, default="")
    reviewer: Mapped[str] = mapped_column(String(128), nullable=False, default="")


class AuditEvent(Base):
    """What happened, when, with which model, for which client, on which input (by hash).

    ``result_id`` is not a foreign key: an audit row is kept for its own retention period, whatever happens to
    the result it names.
    """

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)
    #: "result", "review" or "purge".
    event: Mapped[str] = mapped_column(String(32), nullable=False)
    result_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    model_name: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    model_version: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    client: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    input_sha256: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    detail: Mapped[str] = mapped_column(Text, nullable=False, default="")


class OutboxItem(Base):
    """One DICOM object (an SR or SC) the DICOM node made for a result, to be C-STOREd to the PACS at least once.

    Written in the same transaction as its result, before the sender of the image is answered; the node's sender
    thread delivers it (:mod:`pneumoscan.dicom_node.forward`), trying again with a growing pause, until it is
    stored (``delivered``) or its retention runs out (``failed``, with why). ``data`` holds the Part 10 bytes, so a
    retry sends the very same object, its SOP Instance UID included; it is emptied once delivered. An object that
    could not be made at all is a ``failed`` item without data or UID, its reason in ``last_error``.
    """

    __tablename__ = "dicom_outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("worklist_results.id", ondelete="CASCADE"), nullable=False,
                                           index=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)
    #: "SR" or "SC".
    kind: Mapped[str] = mapped_column(String(8), nullable=False)
    sop_class_uid: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    #: The object's own SOP Instance UID (under pneumoscan's UID root); NULL for an object that could not be made.
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64), nullable=False, default="")
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False, default=b"")
    #: One of :data:`OUTBOX_STATES`.
    state: Mapped[str] = mapped_column(String(16), nullable=False, default="pending", index=True)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    #: Why the last try failed (or, once failed, why the item was given up); "" when none failed.
    last_error: Mapped[str] = mapped_column(Text, nullable=False, default="")
    #: When it may be tried next (pending items only).
    next_attempt: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False, index=True)
    last_attempt: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    #: The PACS (``AET@HOST:PORT``) it was last sent to.
    target: Mapped[str] = mapped_column(String(128), nullable=False, default="")
