"""``POST /api/v1/explain``: one file already scored, re-rendered for the page's viewer: the decoded film at full
resolution (the browser cannot decode DICOM) and, on request, the heatmap alone, so that the viewer can
overlay it with any opacity. Nothing is recorded in the worklist, nothing enters the drift window, the upload is
never saved. Behind the token, with the same body limits and memory budget as ``/predict``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from pneumoscan.constants import DISCLAIMER
from pneumoscan.io import ImageError
from pneumoscan.serve.analysis import FILM_MAX_SIDE, error_entry, render_film
from pneumoscan.serve.batch import OverBudget, failed, refused, run_budgeted
from pneumoscan.serve.body import parse_files
from pneumoscan.serve.schemas import ExplainResponse, Problem
from pneumoscan.serve.security import log_id
from pneumoscan.serve.state import ServerState

__all__ = ["explain_router"]

log = logging.getLogger("pneumoscan.serve")

_DESCRIPTION = (
    "multipart/form-data with exactly one `files` part (JPEG, PNG or DICOM), a file the client has already scored "
    "with `/predict`. Returns `results` with one entry: with `film=true` (the default) `film_png`, the decoded film "
    "as an 8-bit grayscale PNG data URI (DICOM windowed as for scoring) at full resolution, scaled down to "
    f"{FILM_MAX_SIDE} pixels on its long side when larger (`film_scaled`); with `heatmap=true` the gated decision "
    "and `heatmap_map`, the heatmap (occlusion sensitivity) alone as a grayscale JPEG data URI at the film's aspect (0: no evidence, "
    "255: the map's maximum; colour it and blend it with any opacity, as the page's viewer does: nothing below a "
    "quarter of the maximum, yellow to red above), or `heatmap_error` (out of scope). A file that cannot be read gets its error in the entry, with a 4xx status. "
    "Nothing is added to the worklist. " + DISCLAIMER
)


def explain_router(state: ServerState) -> APIRouter:
    """``POST /api/v1/explain``, behind ``state.auth``."""
    router = APIRouter(prefix="/api/v1", dependencies=[Depends(state.auth)])

    @router.post("/explain", summary="One scored file re-rendered for the viewer: the full film and its heatmap",
                 description=_DESCRIPTION, openapi_extra=_one_file_schema(), tags=["predictions"],
                 response_model=ExplainResponse,
                 responses={400: {"model": Problem}, 413: {"model": ExplainResponse},
                            415: {"model": ExplainResponse}, 422: {"model": ExplainResponse}})
    async def explain(request: Request, heatmap: bool = False, film: bool = True) -> Response:
        try:
            files = await parse_files(request, state)
        except ClientDisconnect:
            return Response(status_code=400)
        if len(files) != 1:
            return JSONResponse({"detail": f"send exactly one file to explain, not {len(files)}"}, status_code=400)
        name, data = files[0]
        async with state.holding(len(data)):
            entry, status = await _render(state, name, data, heatmap=heatmap, film=film)
        body: dict[str, Any] = {"disclaimer": DISCLAIMER, "results": [entry]}
        if status != 200:
            body["detail"] = entry["error"]
        return JSONResponse(ExplainResponse.model_validate(body).model_dump(mode="json", exclude_unset=True),
                            status_code=status)

    return router


async def _render(state: ServerState, name: str, data: bytes, *, heatmap: bool, film: bool
                  ) -> tuple[dict[str, Any], int]:
    """``(entry, status)``: every failure is the entry's error with a 4xx status (500 only for a bug, named)."""
    try:
        entry = await run_budgeted(state, name, data, heatmap=heatmap, work=lambda: render_film(
            state.predictor, name, data, heatmap=heatmap, film=film, max_pixels=state.settings.max_pixels))
        log.info("explain: %s re-rendered (heatmap=%s, film=%s)", log_id(name), heatmap, film)
        return entry, 200
    except (ImageError, OverBudget) as exc:
        log.info("explain: %s refused (%s)", log_id(name), type(exc).__name__)
        result, status = refused(state, name, exc)
        return error_entry(result), status
    except Exception as exc:  # a clear entry, never a bare 500 page
        log.error("explain: %s: internal error (%s)", log_id(name), type(exc).__name__,
                  exc_info=log.isEnabledFor(logging.DEBUG))
        return error_entry(failed(state, name, f"{name}: internal error while rendering this file "
                                               f"({type(exc).__name__})")), 500


def _one_file_schema() -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["files"],
        "properties": {"files": {"type": "string", "format": "binary"}},
    }}}}}
