"""``/api/v1``: the model's description and predictions. Every route here takes or returns patient data, so all
of it sits behind the token when one is configured."""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from pneumoscan.constants import DISCLAIMER
from pneumoscan.serve.batch import analyse_all
from pneumoscan.serve.body import parse_files
from pneumoscan.serve.state import ServerState
from pneumoscan.worklist import rank

__all__ = ["api_router"]

log = logging.getLogger("pneumoscan.serve")

_PREDICT_DESCRIPTION = (
    "multipart/form-data with one or more `files` parts (JPEG, PNG or DICOM; the content is sniffed, the name is "
    "not trusted). With `heatmap=true` each result carries a Grad-CAM overlay as a PNG data URI; with "
    "`preview=true` a downscaled grayscale preview. A mix of good and bad files returns 200 with an error in each "
    "bad file's entry; when every file is bad the status is 4xx (413 for an image over the pixel limit or the "
    "server's memory budget). With a token configured, send `Authorization: Bearer <token>`. " + DISCLAIMER
)


def _upload_schema() -> dict[str, Any]:
    """The request body as OpenAPI shows it (the route reads the body itself, so FastAPI cannot describe it)."""
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["files"],
        "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
    }}}}}


def api_router(state: ServerState) -> APIRouter:
    """``GET /api/v1/model`` and ``POST /api/v1/predict``, behind ``state.auth``."""
    router = APIRouter(prefix="/api/v1", dependencies=[Depends(state.auth)])

    @router.get("/model", summary="The model card's metadata")
    async def model() -> dict[str, Any]:
        return state.info

    @router.post("/predict", summary="Pneumonia probability and decision for one or many uploaded images",
                 description=_PREDICT_DESCRIPTION, openapi_extra=_upload_schema())
    async def predict(request: Request, heatmap: bool = False, preview: bool = False) -> Response:
        t0 = time.perf_counter()
        try:
            files = await parse_files(request, state)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is listening
        async with state.holding(sum(len(d) for _, d in files)):
            entries, statuses, gone = await analyse_all(request, state, files, heatmap, preview)
        if gone:
            log.info("predict: client disconnected; stopped after %d of %d file(s)",
                     sum(s != 0 and s != 499 for s in statuses), len(files))
            return Response(status_code=499)
        log.info("predict: %d file(s), %d scored, in %.2f s", len(files), statuses.count(200),
                 time.perf_counter() - t0)
        return _predict_response(state, entries, statuses)

    return router


def _predict_response(state: ServerState, entries: list[dict[str, Any]], statuses: list[int]) -> JSONResponse:
    """200 with every entry when at least one file was scored; else the shared 4xx (422 when they differ)."""
    ok = [e for e in entries if e["ok"]]
    rank(entries)  # numbers the scored entries; the response keeps the upload order
    p = state.predictor
    body: dict[str, Any] = {"model": {"name": p.model_name, "version": p.version, "threshold": p.threshold},
                            "disclaimer": DISCLAIMER, "results": entries}
    if ok:
        return JSONResponse(body)
    body["detail"] = entries[0]["error"] if len(entries) == 1 else f"none of the {len(entries)} files could be read"
    bad = [s for s in statuses if s != 200]
    return JSONResponse(body, status_code=bad[0] if len(set(bad)) == 1 else 422)
