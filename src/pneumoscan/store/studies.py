"""Studies and repeats in the worklist database.

* A study's films are listed together: rows with the same StudyInstanceUID (else the same accession number) form
  one group; in the risk order the groups come by their riskiest film (scored in-scope films by probability, then
  groups with only films not assessed, then files not read), and within a group its films by the same rule. A row
  without either identifier (a JPEG or PNG upload) is a group of its own, so such rows keep the plain risk order.
* The same input sent again (the same SHA-256 of its bytes, answered by the same model) is one result: the row's
  ``times_received`` goes up and an audit row (``repeat``) records who sent it when, instead of a second row.
  That holds when two servers on one database receive it at the same moment: the new row carries a
  :func:`repeat_key` that the database keeps unique, so the second insert finds the first row instead of making
  another (and the count is raised in SQL, on a locked row, so no count is lost).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from sqlalchemy import String, Select, case, cast, func, literal, select
from sqlalchemy.orm import Session, defer

from pneumoscan.store.models import CATEGORY_ERROR, CATEGORY_SCORED, AuditEvent, ResultRow
from pneumoscan.store.rows import order_by

__all__ = ["ALONE", "count_repeat", "find_by_key", "find_repeat", "listing", "received_key", "repeat_key", "study_fields",
           "study_key"]

#: The prefix of a row's own key when it has neither a StudyInstanceUID nor an accession number.
ALONE = "row:"


def study_key() -> Any:
    """The SQL expression of a row's study: ``uid:<StudyInstanceUID>``, else ``accession:<accession>``, else
    ``row:<id>`` (a group of its own)."""
    return case((ResultRow.study_uid != "", literal("uid:") + ResultRow.study_uid),
                (ResultRow.accession != "", literal("accession:") + ResultRow.accession),
                else_=literal(ALONE) + cast(ResultRow.id, String))


def listing(where: list[Any], order: str, *, limit: int, offset: int, thumbnails: bool) -> Select[Any]:
    """The worklist query: ``(ResultRow, study key, rows of that study among those listed)`` for the rows that
    match ``where``. ``order="risk"`` lists a study's rows together (see the module); ``"newest"`` and
    ``"oldest"`` list by time received, as :func:`pneumoscan.store.rows.order_by` says.

    Raises:
        ValueError: an unknown ``order``.
    """
    within = order_by(order)  # checks the order
    key = study_key()
    risk = case((ResultRow.category == CATEGORY_SCORED, ResultRow.probability), else_=None)
    groups = select(
        ResultRow.id.label("rid"), key.label("study_key"),
        func.count().over(partition_by=key).label("study_size"),
        func.min(ResultRow.category).over(partition_by=key).label("g_category"),
        func.max(risk).over(partition_by=key).label("g_risk"),
        func.max(ResultRow.id).over(partition_by=key).label("g_id"),
    ).where(*where).subquery()
    query = (select(ResultRow, groups.c.study_key, groups.c.study_size)
             .join(groups, ResultRow.id == groups.c.rid))
    if order == "risk":
        query = query.order_by(groups.c.g_category.asc(), groups.c.g_risk.desc().nulls_last(), groups.c.g_id.desc(),
                               groups.c.study_key.asc(), ResultRow.category.asc(), risk.desc().nulls_last(),
                               ResultRow.id.desc())
    else:
        query = query.order_by(*within)
    if not thumbnails:
        query = query.options(defer(ResultRow.thumbnail))
    return query.limit(limit).offset(offset)


def study_fields(key: str | None, size: int | None) -> dict[str, Any]:
    """A listed row's ``study_key`` (``uid:...`` or ``accession:...``; ``""`` for a row of its own) and
    ``study_size`` (how many of the listed rows, all pages together, share it)."""
    if not key or key.startswith(ALONE):
        return {"study_key": "", "study_size": 1}
    return {"study_key": key, "study_size": int(size or 1)}


def _key(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).hexdigest()


def repeat_key(row: ResultRow) -> str | None:
    """The key that makes a later upload a repeat of ``row`` (:func:`find_repeat`'s columns, hashed); None for a
    file not read, which is never a repeat."""
    if row.category == CATEGORY_ERROR:
        return None
    return _key("repeat", row.input_sha256, row.model_name, row.model_version, row.category, row.decision)


def received_key(row: ResultRow) -> str | None:
    """The key that makes a DICOM image received again a duplicate of ``row`` (its SOP Instance UID and bytes, as
    :func:`pneumoscan.store.outbox.received` matches them); None without a UID or for a file not read."""
    if row.category == CATEGORY_ERROR or not row.sop_uid:
        return None
    return _key("dicom", row.sop_uid, row.input_sha256)


def find_repeat(s: Session, row: ResultRow) -> ResultRow | None:
    """The stored result of the same input (SHA-256) from the same model (name and version) that ``row`` would
    repeat, or None. Files not read are never repeats (their failure may have been passing: busy, cancelled, over
    the memory budget), and neither is anything a new row would say differently. The row is locked until the
    transaction ends (PostgreSQL; SQLite's writers take turns anyway), so a count raised on it is never lost."""
    if row.category == CATEGORY_ERROR:
        return None
    return s.scalars(select(ResultRow).where(
        ResultRow.input_sha256 == row.input_sha256, ResultRow.model_name == row.model_name,
        ResultRow.model_version == row.model_version, ResultRow.category == row.category,
        ResultRow.decision == row.decision, ResultRow.category != CATEGORY_ERROR)
        .order_by(ResultRow.id.desc()).limit(1).with_for_update()).first()


def find_by_key(s: Session, key: str) -> ResultRow | None:
    """The row holding ``key`` (:func:`repeat_key`, :func:`received_key`), locked as :func:`find_repeat` does."""
    return s.scalars(select(ResultRow).where(ResultRow.repeat_key == key).with_for_update()).first()


def count_repeat(s: Session, existing: ResultRow, row: ResultRow, now: datetime) -> int:
    """``row`` received again as ``existing``: raise its count (in SQL: ``times_received + 1``), fill a thumbnail
    it lacked, write the ``repeat`` audit row (who sent it, when); return how many times it has now been
    received."""
    existing.times_received = ResultRow.times_received + 1
    if not existing.thumbnail and row.thumbnail:
        existing.thumbnail = row.thumbnail
    s.flush()
    times = int(existing.times_received)  # read back after the UPDATE
    s.add(AuditEvent(created=now, event="repeat", result_id=existing.id, model_name=existing.model_name,
                     model_version=existing.model_version, client=row.client, input_sha256=existing.input_sha256,
                     detail=f"{row.source or 'unknown source'}: the same input again (received "
                            f"{times} times); no new row"))
    return times
