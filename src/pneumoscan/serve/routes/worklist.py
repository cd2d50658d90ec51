"""``/api/v1/worklist`` and ``/api/v1/audit``: the stored worklist (highest risk first, a study's films together,
with filters), readers' reviews (under the reader's name: ``/api/v1/reader`` says who the caller is) and the audit
trail, from the worklist database (:class:`pneumoscan.store.WorklistStore`). Patient data,
so behind the token like the rest of ``/api/v1``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

import anyio
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect

from pneumoscan.constants import DISCLAIMER, SCORE_SCALE
from pneumoscan.serve.body import BadRequest, read_body
from pneumoscan.serve.params import Offset, ResultId, when
from pneumoscan.serve.security import reader_of
from pneumoscan.serve.state import ServerState
from pneumoscan.serve.schemas import (
    AuditPage,
    Problem,
    StoredResult,
    StoredResultWithReviews,
    WorklistPage,
)
from pneumoscan.store import MAX_LIMIT, MAX_NOTE_CHARS, ResultNotFoundError
from pneumoscan.worklist import csv_text, rank

__all__ = ["STORED_COLUMNS", "csv_row", "ranked", "worklist_router"]

#: Largest review body accepted, in bytes (a verdict and a note of at most 2,000 characters).
MAX_REVIEW_BYTES = 64 * 1024

_LIST_DESCRIPTION = (
    "Every result this server (and the DICOM node sharing its database) has stored, highest risk first: scored "
    "in-scope images by pneumonia probability, then images not assessed (out of scope; their `probability` is "
    "kept for audit only and is not a risk), then files that could not be read. The films of one study (the same "
    "StudyInstanceUID, else the same accession) are listed together, the study placed by its riskiest film and "
    "its films in the same order (`study_key`, `study_size`); the same input sent again is one result "
    "(`times_received`). Filters: `flagged=true` (flagged "
    "as possible pneumonia), `borderline=10` (scored in scope within 10 points of its threshold on the 0-100 "
    "score, i.e. a probability within 0.10 of it; any band above 0 and at most 50), `unreviewed=true` (no "
    "reader's review yet), `in_scope=true|false`, `since` and `until` (ISO 8601 dates or times, UTC unless they "
    "say otherwise; a date as `until` includes that day); `order=risk` (default), `newest` or `oldest`; `limit` "
    "and `offset` page through `total`. Each result carries its DICOM context (patient ID, accession, study "
    "date, age, sex, view, UIDs; never the patient's name), its latest `review`, its `thumbnail` (a small "
    "JPEG data URI, or null; `thumbnails=false` leaves them out) and its `rank` among the listed results (the one "
    "risk ranking: scored in-scope results by probability; null out of scope and for files not read). The same "
    "rows as CSV: `GET /api/v1/worklist.csv`. " + DISCLAIMER
)
_CSV_DESCRIPTION = (
    "The stored worklist as CSV (the same filters and `order` as `GET /api/v1/worklist`; at most `limit` rows, "
    f"{MAX_LIMIT:,} by default): one row per result with its rank among the listed results, the score and threshold "
    "on 0-100, the decision in words and as a machine label, the scope verdict, the DICOM context (never the "
    "patient's name), the latest review, the model, the export time and the disclaimer on every row. Text that a "
    "spreadsheet would run as a formula starts with `'`. " + DISCLAIMER
)
_CAUSE = "Only flagged results whose pattern is more like this cause (BACTERIAL or VIRAL)"
_BORDERLINE = ("Only scored in-scope results within this many points of their threshold, on the 0-100 score "
               "(10: threshold - 10 to threshold + 10)")
_REVIEW_DESCRIPTION = (
    'JSON `{"verdict": "agree" | "disagree", "note": "..."}` (note optional, at most '
    f"{MAX_NOTE_CHARS:,} characters). Every review is kept and audited; the latest is the result's current "
    "review. The reviewer recorded is the reader whose token the request carries (their name, with per-reader "
    "tokens; else the shared token's short hash, or `local`). 404 for an unknown id, "
    "422 for a bad verdict or note. Returns the result with its new review."
)


async def _review_body(request: Request, state: ServerState) -> tuple[Any, Any]:
    """``(verdict, note)`` from the JSON body, read within the size and time limits."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_REVIEW_BYTES:
        raise BadRequest(413, f"a review is at most {MAX_REVIEW_BYTES:,} bytes", close=True)
    raw = await read_body(request, state)
    if len(raw) > MAX_REVIEW_BYTES:
        raise BadRequest(413, f"a review is at most {MAX_REVIEW_BYTES:,} bytes", close=True)
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(422, 'send JSON: {"verdict": "agree" | "disagree", "note": "..."}') from None
    if not isinstance(body, dict):
        raise BadRequest(422, 'send a JSON object: {"verdict": "agree" | "disagree", "note": "..."}')
    note = body.get("note", "")
    if note is None:
        note = ""
    if not isinstance(note, str):
        raise BadRequest(422, "note must be text")
    return body.get("verdict"), note


#: The columns of ``GET /api/v1/worklist.csv``: the worklist CSV's vocabulary (``pneumoscan predict --out x.csv``)
#: for stored results, which have no file name (the server keeps it only as a hash) but an id, a time received, a
#: source, a client and the readers' latest review.
STORED_COLUMNS = ("rank", "id", "received", "source", "client", "patient_id", "accession", "study_date", "age", "sex",
                  "view", "score", "score_threshold", "decision_text", "probability", "decision", "positive",
                  "in_scope", "scope_reason", "scope_caution", "threshold", "cause", "cause_text", "cause_score",
                  "cause_probability", "cause_threshold", "error", "study_uid", "series_uid", "sop_uid",
                  "times_received", "review", "review_note", "reviewer", "model_name", "model_version", "exported_at",
                  "disclaimer")


def ranked(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The listed rows, in their order, each with ``rank``: THE ranking (:func:`pneumoscan.worklist.rank`) among
    them (scored in scope, by probability; None out of scope and for files not read)."""
    for row in rows:
        row["rank"] = None
    rank(rows)  # numbers them in place; the list keeps the order it was asked for
    return rows


def csv_row(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row as a CSV row of :data:`STORED_COLUMNS` (the context flat, the latest review spelled out)."""
    review = row.get("review") or {}
    return {**row, **row["context"], "received": row["created"], "review": review.get("verdict", ""),
            "review_note": review.get("note", ""), "reviewer": review.get("reviewer", "")}


class ReaderInfo(BaseModel):
    """``GET /api/v1/reader``: who the caller is, as reviews and audit rows record it."""

    reader: str = Field(description="The reader's name (per-reader tokens), `token-` and the shared token's short "
                                    "hash, or `local` (no authentication)")
    named: bool = Field(description="True when the token is a named reader's own")
    auth: bool = Field(description="Whether this server asks for a token")


def _json(model: type[BaseModel], data: dict[str, Any]) -> JSONResponse:
    """``data`` checked against its response ``model`` (the schema ``/openapi.json`` publishes)."""
    return JSONResponse(model.model_validate(data).model_dump(mode="json", exclude_unset=True))


def worklist_router(state: ServerState) -> APIRouter:
    """``GET /api/v1/worklist``, ``GET /api/v1/worklist/{id}``, ``POST /api/v1/worklist/{id}/review`` and
    ``GET /api/v1/audit``, behind ``state.auth``."""
    router = APIRouter(prefix="/api/v1", dependencies=[Depends(state.auth)])
    store = state.store

    def _filters(flagged: bool, unreviewed: bool, in_scope: bool | None, borderline: float | None,
                 since: str | None, until: str | None, cause: str | None) -> dict[str, Any]:
        return {"flagged_only": flagged, "unreviewed_only": unreviewed, "in_scope": in_scope, "cause": cause,
                "borderline": None if borderline is None else borderline / SCORE_SCALE,
                "since": when(since, "since"), "until": when(until, "until", end_of_day=True)}

    @router.get("/worklist", summary="The stored worklist, highest risk first", description=_LIST_DESCRIPTION,
                tags=["worklist"], response_model=WorklistPage, response_model_exclude_unset=True)
    async def worklist(flagged: bool = False, unreviewed: bool = False, in_scope: bool | None = None,
                       borderline: float | None = Query(None, gt=0, le=50, description=_BORDERLINE),
                       since: str | None = None, until: str | None = None,
                       order: Literal["risk", "newest", "oldest"] = "risk", thumbnails: bool = True,
                       cause: Literal["BACTERIAL", "VIRAL"] | None = Query(None, description=_CAUSE),
                       limit: int = Query(200, ge=1, le=MAX_LIMIT), offset: Offset = 0) -> dict[str, Any]:
        filters = _filters(flagged, unreviewed, in_scope, borderline, since, until, cause)

        def read() -> tuple[list[dict[str, Any]], int]:
            return (ranked(store.list(**filters, limit=limit, offset=offset, order=order, thumbnails=thumbnails)),
                    store.count(**filters))

        results, total = await anyio.to_thread.run_sync(read)
        return {"results": results, "total": total, "limit": limit, "offset": offset, "order": order,
                "borderline": borderline, "disclaimer": DISCLAIMER}

    @router.get("/worklist.csv", summary="The stored worklist as CSV, with the same filters and order",
                description=_CSV_DESCRIPTION, tags=["worklist"], response_class=Response,
                responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}},
                                 "description": "One row per listed result: " + ", ".join(STORED_COLUMNS)}})
    async def worklist_csv(flagged: bool = False, unreviewed: bool = False, in_scope: bool | None = None,
                           borderline: float | None = Query(None, gt=0, le=50, description=_BORDERLINE),
                           since: str | None = None, until: str | None = None,
                           order: Literal["risk", "newest", "oldest"] = "risk",
                           cause: Literal["BACTERIAL", "VIRAL"] | None = Query(None, description=_CAUSE),
                           limit: int = Query(MAX_LIMIT, ge=1, le=MAX_LIMIT),
                           offset: Offset = 0) -> Response:
        filters = _filters(flagged, unreviewed, in_scope, borderline, since, until, cause)

        def read() -> str:
            rows = ranked(store.list(**filters, limit=limit, offset=offset, order=order, thumbnails=False))
            return csv_text([csv_row(r) for r in rows], {}, columns=STORED_COLUMNS, stamp="exported_at")

        text = await anyio.to_thread.run_sync(read)
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        return Response(text, media_type="text/csv; charset=utf-8", headers={
            "Content-Disposition": f'attachment; filename="pneumoscan-worklist-{stamp}.csv"',
            "Cache-Control": "no-store"})

    @router.get("/worklist/{result_id}", summary="One stored result, with its reviews", tags=["worklist"],
                response_model=StoredResultWithReviews, responses={404: {"model": Problem}})
    async def one(result_id: ResultId) -> JSONResponse:
        def read() -> dict[str, Any]:
            return {**store.get(result_id), "reviews": store.reviews(result_id)}

        try:
            return _json(StoredResultWithReviews, await anyio.to_thread.run_sync(read))
        except ResultNotFoundError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=404)

    @router.post("/worklist/{result_id}/review", summary="Record a reader's review of a result",
                 description=_REVIEW_DESCRIPTION, tags=["worklist"], response_model=StoredResult,
                 responses={400: {"model": Problem}, 404: {"model": Problem}, 413: {"model": Problem},
                            422: {"model": Problem}}, openapi_extra={"requestBody": {"required": True, "content": {
                     "application/json": {"schema": {"type": "object", "required": ["verdict"], "properties": {
                         "verdict": {"type": "string", "enum": ["agree", "disagree"]},
                         "note": {"type": "string", "maxLength": MAX_NOTE_CHARS}}}}}}})
    async def review(result_id: ResultId, request: Request) -> JSONResponse:
        try:
            verdict, note = await _review_body(request, state)
        except ClientDisconnect:
            return JSONResponse({"detail": "client disconnected"}, status_code=400)
        try:
            out = await anyio.to_thread.run_sync(
                lambda: store.review(result_id, verdict=verdict, note=note,
                                     reviewer=reader_of(request, state.auth.client_id)))
        except ResultNotFoundError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=404)
        except ValueError as exc:
            return JSONResponse({"detail": str(exc)}, status_code=422)
        return _json(StoredResult, out)

    @router.get("/reader", summary="Who the caller is: the name its reviews are recorded under", tags=["worklist"],
                response_model=ReaderInfo)
    async def reader(request: Request) -> dict[str, Any]:
        who = reader_of(request, state.auth.client_id)
        return {"reader": who, "named": who in state.auth.readers, "auth": state.auth.enabled}

    @router.get("/audit", summary="The audit trail, newest first", tags=["worklist"], response_model=AuditPage,
                description="One row per stored result, input received again (`repeat`), review and retention "
                            "purge: when, which model and version, who (the reader's name, the shared token's "
                            "hash, an AE title or `local`) and the input's SHA-256.")
    async def audit(limit: int = Query(200, ge=1, le=MAX_LIMIT), offset: Offset = 0,
                    event: str | None = None) -> dict[str, Any]:
        events = await anyio.to_thread.run_sync(lambda: store.audit(limit, offset, event=event))
        return {"events": events, "limit": limit, "offset": offset}

    return router
