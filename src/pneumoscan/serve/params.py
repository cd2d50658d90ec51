"""The API's bounded parameters: every id, offset and time a route takes is checked here, at the boundary, so
that an out-of-range value is a 422 (or a 404 for an id no row can have), never an ``OverflowError`` deep in the
database driver (a 500).

- ids and offsets are signed 64-bit integers (SQLite's INTEGER, PostgreSQL's BIGINT): :data:`ResultId` (1 and
  up), :data:`Offset` (0 and up);
- times (:func:`when`) are ISO 8601 dates or times that can be turned into UTC without leaving
  :class:`datetime.datetime`'s range (``9999-12-31T23:59:59-14:00`` cannot, nor ``until=9999-12-31``, whose end
  is the next midnight).
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated

from fastapi import Path, Query

from pneumoscan.serve.body import BadRequest
from pneumoscan.store.rows import utc

__all__ = ["MAX_INT64", "Offset", "ResultId", "when"]

#: The largest id or offset the API takes (a signed 64-bit integer: what the database can hold).
MAX_INT64 = 2**63 - 1

#: A stored result's id in a route's path: 1 up to :data:`MAX_INT64` (422 outside).
ResultId = Annotated[int, Path(ge=1, le=MAX_INT64, description="A stored result's id (`id` in the worklist)")]
#: How many rows to skip: 0 up to :data:`MAX_INT64` (422 outside).
Offset = Annotated[int, Query(ge=0, le=MAX_INT64, description="How many rows to skip (paging through `total`)")]

_EXAMPLE = "use e.g. 2024-05-01 or 2024-05-01T08:00:00Z"


def when(text: str | None, name: str, *, end_of_day: bool = False) -> datetime | date | None:
    """An ISO 8601 date (``2024-05-01``) or time (``2024-05-01T08:00:00Z``) from a query parameter, or None when
    empty; ``end_of_day``: the value is an upper bound (a date then ends at the next midnight).

    Raises:
        BadRequest: 422 when it is not an ISO 8601 date or time, or its UTC time is out of range.
    """
    if text is None or not text.strip():
        return None
    text = text.strip()
    try:
        moment = date.fromisoformat(text) if len(text) == 10 else datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(422, f"{name}: {text[:40]!r} is not an ISO 8601 date or time; {_EXAMPLE}") from None
    try:
        utc(moment, end_of_day=end_of_day)  # what the database will be asked; it must exist
    except (OverflowError, ValueError):
        raise BadRequest(422, f"{name}: {text[:40]!r} is out of range (in UTC it falls outside the years 1 to "
                              f"9999); {_EXAMPLE}") from None
    return moment
