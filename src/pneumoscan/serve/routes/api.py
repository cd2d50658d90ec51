"""``/api/v1``: the model's description, predictions and the site's drift check (the stored worklist is in
:mod:`.worklist`). Every route here takes or returns patient data (or what the site's films look like), so all of
it sits behind the token when one is configured."""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from pneumoscan.constants import DISCLAIMER
from pneumoscan.serve.batch import analyse_all
from pneumoscan.serve.body import parse_files
from pneumoscan.serve.schemas import DriftReport, ModelInfo, PredictResponse
from pneumoscan.serve.state import ServerState
from pneumoscan.worklist import rank

__all__ = ["api_router"]

log = logging.getLogger("pneumoscan.serve")

_PREDICT_DESCRIPTION = (
    "multipart/form-data with one or more `files` parts (JPEG, PNG or DICOM; the content is sniffed, the name is "
    "not trusted). With `heatmap=true` each result carries a heatmap overlay (where hiding the film lowered the score) as a PNG data URI; with "
    "`preview=true` a downscaled grayscale preview. Every image passes the out-of-scope gate (DICOM header, pixel "
    "statistics, the model's own features): each result carries `in_scope` and `scope_reason`, and an image out of "
    "scope gets `decision` `OUT_OF_SCOPE`, `positive` false, `rank` null and no heatmap; its `probability` is kept "
    "for audit only and must not be shown as a risk. A chest film unlike the training films is scored in scope "
    "with `scope_caution` (shown beside its score). Scored in-scope images are ranked by probability. A mix of "
    "good and bad files returns 200 with an error in each bad file's entry; when every file is bad the status is 4xx "
    "(413 for an image over the pixel limit or the server's memory budget). Every file's entry, result or error, "
    "is stored in the worklist database and carries its `worklist_id` (`GET /api/v1/worklist`; null, with "
    "`worklist_error`, if the database failed). The same file sent again (same SHA-256, answered the same way by "
    "the same model) is one result: its entry names the earlier row (`worklist_id`) with `times_received` raised, "
    "and the audit trail records the repeat under the sender's name. With a token configured, send "
    "`Authorization: Bearer <token>` (a shared token, or the reader's own: it names the sender). " + DISCLAIMER
)


_DRIFT_DESCRIPTION = (
    "The drift check on a rolling window of the most recent in-scope images this server analysed (at most "
    "`window`), against the reference of training films the model carries: the larger of two kernel two-sample "
    "statistics (maximum mean discrepancy) on the model's pooled features and on the films' intensity percentiles, "
    "each scaled by its null 95th percentile; `threshold` comes from resampling validation batches of the same "
    "size, so a batch like the training data is called `shifted` at most 5% of the time. `available` is false, "
    "with `reason`, when the model carries no reference or fewer than `min_images` (50) in-scope images have been "
    "analysed. The reference's classes are reweighted to the mix of cases that fits the window best "
    "(`estimated_mix`), so a site's share of pneumonia alone does not make it `shifted`. When `shifted`, results "
    "may not hold at this site: first adapt the model to the site's films, which needs no labels (`pneumoscan "
    "adapt`), then calibrate it on the site's own labelled films (`pneumoscan calibrate`)."
)


def _upload_schema() -> dict[str, Any]:
    """The request body as OpenAPI shows it (the route reads the body itself, so FastAPI cannot describe it)."""
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["files"],
        "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
    }}}}}


def api_router(state: ServerState) -> APIRouter:
    """``GET /api/v1/model``, ``POST /api/v1/predict`` and ``GET /api/v1/drift``, behind ``state.auth``."""
    router = APIRouter(prefix="/api/v1", dependencies=[Depends(state.auth)])

    @router.get("/model", summary="The model card's metadata", tags=["model"], response_model=ModelInfo)
    async def model() -> dict[str, Any]:
        return state.info

    @router.post("/predict", summary="Pneumonia probability and decision for one or many uploaded images",
                 description=_PREDICT_DESCRIPTION, openapi_extra=_upload_schema(), tags=["predictions"],
                 response_model=PredictResponse,
                 responses={413: {"model": PredictResponse, "description": "Every file too large"},
                            415: {"model": PredictResponse, "description": "No file is an image this server reads"},
                            422: {"model": PredictResponse, "description": "No file could be read"}})
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

    @router.get("/drift", summary="Do this site's recent images still look like the training data?",
                description=_DRIFT_DESCRIPTION, tags=["monitoring"], response_model=DriftReport)
    async def drift() -> dict[str, Any]:
        return await anyio.to_thread.run_sync(state.drift.report, limiter=state.drift_limiter)

    return router


def _predict_response(state: ServerState, entries: list[dict[str, Any]], statuses: list[int]) -> JSONResponse:
    """200 with every entry when at least one file was scored; else the shared 4xx (422 when they differ)."""
    ok = [e for e in entries if e["ok"]]
    rank(entries)  # numbers the scored in-scope entries (out of scope: rank None); the response keeps upload order
    p = state.predictor
    body: dict[str, Any] = {"model": {"name": p.model_name, "version": p.version, "threshold": p.threshold,
                                      "site_state": state.info["site_state"]},
                            "disclaimer": DISCLAIMER, "results": entries}
    status = 200
    if not ok:
        body["detail"] = entries[0]["error"] if len(entries) == 1 else f"none of the {len(entries)} files could be read"
        bad = [s for s in statuses if s != 200]
        status = bad[0] if len(set(bad)) == 1 else 422
    return JSONResponse(PredictResponse.model_validate(body).model_dump(mode="json", exclude_unset=True), status_code=status)
