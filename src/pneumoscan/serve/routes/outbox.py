"""``GET /api/v1/outbox``: the DICOM node's backlog for the PACS (its SR and SC objects pending, delivered and
failed), read from the worklist database the node and the server share; behind the token like the rest of
``/api/v1``."""

from __future__ import annotations

from typing import Any, Literal

import anyio
from fastapi import APIRouter, Depends, Query

from pneumoscan.serve.params import Offset
from pneumoscan.serve.schemas import OutboxPage
from pneumoscan.serve.state import ServerState
from pneumoscan.store import MAX_LIMIT

__all__ = ["outbox_router"]

_DESCRIPTION = (
    "What `pneumoscan dicom-listen --forward` still has to deliver: each result's Structured Report and Secondary "
    "Capture, kept in the database until the PACS has stored them (tried again with a growing pause across "
    "restarts, for the node's `--forward-retention`), then `delivered`, or `failed` with the reason. `counts` "
    "covers every object; `items` lists one state (default `pending`, oldest first: the head of the backlog; "
    "`delivered` and `failed` newest first), paged with `limit` and `offset`. No patient data: an object names "
    "its result by `result_id` (`GET /api/v1/worklist/{id}`). The same as `pneumoscan dicom-listen --status`."
)


def outbox_router(state: ServerState) -> APIRouter:
    """``GET /api/v1/outbox``, behind ``state.auth``."""
    router = APIRouter(prefix="/api/v1", dependencies=[Depends(state.auth)])
    store = state.store

    @router.get("/outbox", summary="The DICOM node's SR/SC backlog for the PACS", description=_DESCRIPTION,
                tags=["worklist"], response_model=OutboxPage)
    async def outbox(item_state: Literal["pending", "delivered", "failed"] = Query("pending", alias="state"),
                     limit: int = Query(50, ge=1, le=MAX_LIMIT), offset: Offset = 0) -> dict[str, Any]:
        def read() -> tuple[dict[str, int], list[dict[str, Any]]]:
            return store.outbox.counts(), store.outbox.items(item_state, limit=limit, offset=offset)

        counts, items = await anyio.to_thread.run_sync(read)
        return {"counts": counts, "state": item_state, "items": items, "limit": limit, "offset": offset}

    return router
