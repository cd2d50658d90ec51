"""The FastAPI app: the web page, ``/healthz``, and the REST API under ``/api/v1``.

One :class:`~pneumoscan.predict.Predictor` is built at start-up. Routes only check the input and call it, in a
bounded thread pool, so the event loop (and ``/healthz``) stays responsive while predictions run.

Safety rules:

- the request body is read into memory with a hard size limit (413 past it), a limit on all bodies held at
  once (503), a limit on pauses while it arrives and on its total time (408);
- uploads never touch the disk unless ``save_uploads`` names a folder, and then under a server-made name,
  owner-only, for a limited time;
- the content is sniffed, the file name and extension are never trusted, and logs name a file by a hash;
- each image's decoding memory is estimated from its header and admitted against a server-wide budget;
- every failure while analysing one file, of any kind, is that file's error entry; the others keep theirs;
- when the client disconnects, the work for it stops;
- with a token configured, every route that takes or returns patient data needs it (``/healthz`` does not).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from pneumoscan import __version__
from pneumoscan.constants import DISCLAIMER, INTENDED_USE
from pneumoscan.io import (
    ImageError,
    ImageMemoryError,
    ImageTooLargeError,
    NotAnImageError,
    UnsupportedDicomError,
    read_image_info,
    sniff_format,
)
from pneumoscan.serve.analysis import Cancelled, UploadStore, analyse
from pneumoscan.serve.budget import BudgetExceeded, MemoryBudget, estimate_decode_bytes
from pneumoscan.serve.security import TokenAuth, Unauthorized, log_id, unauthorized_response
from pneumoscan.serve.settings import ServeSettings
from pneumoscan.worklist import rank

__all__ = ["DISCLAIMER", "INTENDED_USE", "create_app"]

log = logging.getLogger("pneumoscan.serve")

_STATUS_FOR = {ImageTooLargeError: 413, ImageMemoryError: 413, NotAnImageError: 415, UnsupportedDicomError: 415}
_MIB = 1024 * 1024


class _BadRequest(Exception):
    def __init__(self, status: int, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close


class _ServerState:
    """What the routes share: the predictor, limits, thread pool, memory budget and buffered-bytes gauge."""

    def __init__(self, predictor: Any, settings: ServeSettings) -> None:
        self.predictor = predictor
        self.settings = settings
        self.limiter = anyio.CapacityLimiter(settings.workers)
        self.budget = MemoryBudget(settings.memory_budget_bytes)
        self.buffered = 0
        self.uploads = UploadStore(settings.save_uploads, settings.upload_retention_days) if settings.save_uploads else None
        self.auth = TokenAuth(settings.token)
        self.info = _model_info(predictor, _read_model_card())

    @asynccontextmanager
    async def holding(self, nbytes: int) -> AsyncIterator[None]:
        """Count ``nbytes`` of request bodies as held in memory for the block."""
        self.buffered += nbytes
        try:
            yield
        finally:
            self.buffered -= nbytes


# --------------------------------------------------------------------------- model information


def _model_info(predictor: Any, model_card: str | None) -> dict[str, Any]:
    info = predictor.info
    op, vm = info.operating_point, info.val_metrics
    summary = info.val_summary or {}
    at_op = (summary.get("thresholds") or {}).get("operating") or {}
    roc = summary.get("roc_auc")  # {"value", "ci"} in a val_summary; older checkpoints only have val_metrics
    validation = {
        "auc": roc["value"] if isinstance(roc, dict) else vm.get("val_auc"),
        "auc_ci": roc.get("ci") if isinstance(roc, dict) else None,
        "sensitivity": op.get("val_sensitivity", at_op.get("sensitivity")),
        "specificity": op.get("val_specificity", at_op.get("specificity")),
    }
    return {
        "name": info.model,
        "version": predictor.version,
        "backend": predictor.backend,
        "threshold": info.threshold,
        "temperature": info.temperature,
        "operating_point": op,
        "calibration": info.calibration,
        "validation": {k: v for k, v in validation.items() if v is not None},
        "preprocessing": info.preprocessing.to_dict(),
        "classes": list(info.classes) or None,
        "epoch": info.epoch,
        "intended_use": INTENDED_USE,
        "disclaimer": DISCLAIMER,
        "pneumoscan_version": __version__,
        "model_card": model_card,
    }


def _read_model_card() -> str | None:
    try:
        return resources.files("pneumoscan").joinpath("assets/MODEL_CARD.md").read_text(encoding="utf-8")
    except (FileNotFoundError, OSError):
        return None


# --------------------------------------------------------------------------- request bodies


def _display_name(name: str | None, index: int) -> str:
    """A safe label for messages and cards: the client's base name, printable, at most 120 characters."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    return (base or f"upload-{index + 1}")[:120]


async def read_body(request: Request, state: _ServerState) -> bytes:
    """The whole body, within the size limit, the server-wide buffered-bytes limit and the time limits.

    Raises:
        _BadRequest: 413 too large, 503 too much buffered already, 408 the client paused or took too long.
        ClientDisconnect: the client went away.
    """
    settings = state.settings
    limit = settings.max_request_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _BadRequest(413, f"request is {int(declared):,} bytes; the limit is {limit:,} bytes", close=True)
    chunks: list[bytes] = []
    size = 0
    deadline = anyio.current_time() + settings.body_deadline
    stream = request.stream().__aiter__()
    try:
        while True:
            wait = min(settings.body_timeout, deadline - anyio.current_time())
            try:
                with anyio.fail_after(max(wait, 0.0)):
                    chunk = await stream.__anext__()
            except StopAsyncIteration:
                break
            except TimeoutError:
                why = (f"no data for {settings.body_timeout:g} s" if wait == settings.body_timeout
                       else f"the upload took longer than {settings.body_deadline:g} s")
                raise _BadRequest(408, f"request body not received in time: {why}", close=True) from None
            size += len(chunk)
            if size > limit:
                raise _BadRequest(413, f"request is larger than the limit of {limit:,} bytes", close=True)
            if state.buffered + len(chunk) > settings.max_buffered_bytes:
                raise _BadRequest(503, "the server is receiving too many uploads at once; try again shortly",
                                  close=True)
            state.buffered += len(chunk)
            chunks.append(chunk)
    finally:
        state.buffered -= sum(len(c) for c in chunks)  # the caller counts the parsed files while it holds them
    return b"".join(chunks)


async def parse_files(request: Request, state: _ServerState) -> list[tuple[str, bytes]]:
    """The uploaded files as ``(safe display name, bytes)``, in the order sent."""
    settings = state.settings
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise _BadRequest(415, "send the images as multipart/form-data with one or more 'files' fields")
    body = await read_body(request, state)

    async def stream() -> AsyncIterator[bytes]:
        yield body
        yield b""

    parser = MultiPartParser(request.headers, stream(), max_files=settings.max_files, max_fields=100)
    # Keep every part in memory: the body is already bounded by max_request_bytes.
    parser.spool_max_size = settings.max_request_bytes + 1
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise _BadRequest(400, f"malformed multipart upload: {exc.message}") from exc
    files: list[tuple[str, bytes]] = []
    try:
        for i, (_key, value) in enumerate(form.multi_items()):
            if isinstance(value, UploadFile):
                files.append((_display_name(value.filename, i), await value.read()))
    finally:
        await form.close()
    if not files:
        raise _BadRequest(400, "no files in the upload; send one or more files in the 'files' field")
    return files


# --------------------------------------------------------------------------- one file, many files


async def _analyse_one(state: _ServerState, name: str, data: bytes, heatmap: bool, want_preview: bool,
                       cancel: threading.Event) -> tuple[dict[str, Any], int]:
    """``(entry, status)`` for one file; every failure becomes the entry's error, never the request's."""
    settings, predictor = state.settings, state.predictor
    try:
        fmt = sniff_format(data[:132])
        if state.uploads is not None and fmt is not None:
            await anyio.to_thread.run_sync(state.uploads.save, data, fmt)
        info = await anyio.to_thread.run_sync(
            lambda: read_image_info(data, name=name, max_pixels=settings.max_pixels))
        need = estimate_decode_bytes(info, heatmap=heatmap and predictor.backend == "torch")
        async with state.budget.reserve(need):
            entry = await anyio.to_thread.run_sync(
                lambda: analyse(predictor, name, data, heatmap=heatmap, want_preview=want_preview,
                                max_pixels=settings.max_pixels, cancel=cancel),
                limiter=state.limiter)
        log.info("%s: %s, p=%.3f", log_id(name), entry["decision"], entry["probability"])
        return entry, 200
    except ImageError as exc:
        log.info("%s: refused (%s)", log_id(name), type(exc).__name__)
        return {"filename": name, "ok": False, "error": str(exc)}, _STATUS_FOR.get(type(exc), 422)
    except BudgetExceeded:
        log.info("%s: refused (over the memory budget)", log_id(name))
        return {"filename": name, "ok": False,
                "error": f"{name}: image is {info.width} x {info.height} pixels and would need about "
                         f"{need / _MIB:,.0f} MiB to analyse; this server's memory budget is "
                         f"{settings.memory_budget_bytes / _MIB:,.0f} MiB. Downscale it and send it again"}, 413
    except Cancelled:
        return {"filename": name, "ok": False, "error": f"{name}: cancelled, the client disconnected"}, 499
    except Exception as exc:  # noqa: BLE001 - one file's failure must never cost the others their results
        log.error("%s: internal error while analysing (%s)", log_id(name), type(exc).__name__,
                  exc_info=log.isEnabledFor(logging.DEBUG))
        return {"filename": name, "ok": False,
                "error": f"{name}: internal error while analysing this file ({type(exc).__name__}); "
                         "the other files are not affected"}, 500


async def _watch_disconnect(request: Request, cancel: threading.Event, scope: anyio.CancelScope) -> None:
    while not await request.is_disconnected():
        await anyio.sleep(0.2)
    cancel.set()
    scope.cancel()


async def _analyse_all(request: Request, state: _ServerState, files: list[tuple[str, bytes]], heatmap: bool,
                       want_preview: bool) -> tuple[list[dict[str, Any]], list[int], bool]:
    """Analyse the files with bounded parallelism; stop when the client disconnects.

    Returns ``(entries in upload order, statuses, client_gone)``.
    """
    entries: list[Any] = [None] * len(files)
    statuses = [0] * len(files)
    cancel = threading.Event()
    part = anyio.CapacityLimiter(state.settings.request_parallelism)

    async def one(i: int) -> None:
        async with part:
            if cancel.is_set():
                return
            entries[i], statuses[i] = await _analyse_one(state, *files[i], heatmap, want_preview, cancel)

    async with anyio.create_task_group() as outer:
        outer.start_soon(_watch_disconnect, request, cancel, outer.cancel_scope)
        async with anyio.create_task_group() as work:
            for i in range(len(files)):
                work.start_soon(one, i)
        outer.cancel_scope.cancel()
    return entries, statuses, cancel.is_set()


# --------------------------------------------------------------------------- the app, in steps


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(_BadRequest)
    async def _bad_request(_request: Request, exc: _BadRequest) -> JSONResponse:
        headers = {"connection": "close"} if exc.close else None
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(Unauthorized)
    async def _unauthorized(_request: Request, _exc: Unauthorized) -> JSONResponse:
        return unauthorized_response()


def _add_open_routes(app: FastAPI, state: _ServerState) -> None:
    """The page, its static files and the health check: no patient data, no token."""
    static_dir = resources.files("pneumoscan").joinpath("serve/static")
    app.mount("/static", StaticFiles(directory=str(static_dir)), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(str(static_dir.joinpath("index.html")), media_type="text/html")

    @app.get("/healthz", summary="Liveness and readiness (no authentication)")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": state.predictor.model_name, "model_version": state.predictor.version,
                "auth": state.auth.enabled}


_PREDICT_DESCRIPTION = (
    "multipart/form-data with one or more `files` parts (JPEG, PNG or DICOM; the content is sniffed, the name is "
    "not trusted). With `heatmap=true` each result carries a Grad-CAM overlay as a PNG data URI; with "
    "`preview=true` a downscaled grayscale preview. A mix of good and bad files returns 200 with an error in each "
    "bad file's entry; when every file is bad the status is 4xx (413 for an image over the pixel limit or the "
    "server's memory budget). With a token configured, send `Authorization: Bearer <token>`. " + DISCLAIMER
)


def _api_router(state: _ServerState) -> APIRouter:
    """``/api/v1``: every route here takes or returns patient data, so all of it sits behind the token."""
    router = APIRouter(prefix="/api/v1", dependencies=[Depends(state.auth)])
    upload_schema = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["files"],
        "properties": {"files": {"type": "array", "items": {"type": "string", "format": "binary"}}},
    }}}}}

    @router.get("/model", summary="The model card's metadata")
    async def model() -> dict[str, Any]:
        return state.info

    @router.post("/predict", summary="Pneumonia probability and decision for one or many uploaded images",
                 description=_PREDICT_DESCRIPTION, openapi_extra=upload_schema)
    async def predict(request: Request, heatmap: bool = False, preview: bool = False) -> Response:
        t0 = time.perf_counter()
        try:
            files = await parse_files(request, state)
        except ClientDisconnect:
            return Response(status_code=400)  # nobody is listening
        async with state.holding(sum(len(d) for _, d in files)):
            entries, statuses, gone = await _analyse_all(request, state, files, heatmap, preview)
        if gone:
            log.info("predict: client disconnected; stopped after %d of %d file(s)",
                     sum(s != 0 and s != 499 for s in statuses), len(files))
            return Response(status_code=499)
        log.info("predict: %d file(s), %d scored, in %.2f s", len(files), statuses.count(200),
                 time.perf_counter() - t0)
        return _predict_response(state, entries, statuses)

    return router


def _predict_response(state: _ServerState, entries: list[dict[str, Any]], statuses: list[int]) -> JSONResponse:
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


def create_app(predictor: Any, settings: ServeSettings | None = None) -> FastAPI:
    """Build the FastAPI app around one loaded Predictor."""
    state = _ServerState(predictor, settings or ServeSettings())
    app = FastAPI(
        title="pneumoscan",
        version=__version__,
        description="Pneumonia risk on pediatric chest X-rays, with Grad-CAM heatmaps. " + DISCLAIMER,
    )
    app.state.pneumoscan = state
    _add_error_handlers(app)
    _add_open_routes(app, state)
    app.include_router(_api_router(state))
    return app
