"""The FastAPI app factory: :func:`create_app` builds the shared state, the error handlers and the routes.

One :class:`~pneumoscan.inference.predictor.Predictor` is built at start-up. Routes (:mod:`.routes`) only check the input and
call it, in a bounded thread pool, so the event loop (and ``/healthz``) stays responsive while predictions run.

Safety rules:

- the request body is read into memory with a hard size limit (413 past it), a limit on all bodies held at
  once (503), a limit on pauses while it arrives and on its total time (408) (:mod:`.body`);
- uploads never touch the disk unless ``save_uploads`` names a folder, and then under a server-made name,
  owner-only, for a limited time (:class:`.analysis.UploadStore`);
- the content is sniffed, the file name and extension are never trusted, and logs name a file by a hash;
- each image's decoding memory is estimated from its header and admitted against a server-wide budget;
- every failure while analysing one file, of any kind, is that file's error entry; the others keep theirs
  (:mod:`.batch`);
- when the client disconnects, the work for it stops;
- with a token configured, every route that takes or returns patient data needs it (``/healthz`` does not);
- ``/docs`` and ``/redoc`` load nothing from outside the server (:mod:`.routes.docs`);
- every response carries a Content-Security-Policy, ``nosniff``, ``frame-ancestors 'none'``, no referrer, and
  ``/api/v1`` responses ``Cache-Control: no-store`` (:mod:`.headers`); ids, offsets and times out of range are
  422 (:mod:`.params`);
- every analysed upload is recorded in the worklist database (``settings.db``), whose retention runs at
  start-up and then daily.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from pneumoscan import __version__
from pneumoscan.constants import DISCLAIMER, INTENDED_USE
from pneumoscan.serve.body import BadRequest
from pneumoscan.serve.headers import SecurityHeaders
from pneumoscan.serve.routes import (
    DOCS_STATIC,
    api_router,
    docs_router,
    docs_static_files,
    explain_router,
    outbox_router,
    page_router,
    static_files,
    worklist_router,
)
from pneumoscan.serve.security import Unauthorized, unauthorized_response
from pneumoscan.serve.settings import ServeSettings
from pneumoscan.serve.schemas import TAGS
from pneumoscan.serve.state import ServerState
from pneumoscan.store import StoreError, WorklistStore

if TYPE_CHECKING:
    from pneumoscan.inference.protocols import ResultMaker

__all__ = ["DISCLAIMER", "INTENDED_USE", "RETENTION_EVERY_S", "create_app"]

log = logging.getLogger("pneumoscan.serve")

#: Seconds between two retention purges of the worklist database while the server runs.
RETENTION_EVERY_S = 24 * 3600.0


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(BadRequest)
    async def _bad_request(_request: Request, exc: BadRequest) -> JSONResponse:
        headers = {"connection": "close"} if exc.close else None
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(Unauthorized)
    async def _unauthorized(_request: Request, _exc: Unauthorized) -> JSONResponse:
        return unauthorized_response()

    @app.exception_handler(StoreError)
    async def _store_error(_request: Request, exc: StoreError) -> JSONResponse:
        log.error("worklist database: %s", exc)
        return JSONResponse({"detail": "the worklist database is unavailable; see the server log"}, status_code=503)


def _lifespan(state: ServerState) -> Any:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async def retention() -> None:  # the start-up purge ran when the state was built
            while True:
                await anyio.sleep(RETENTION_EVERY_S)
                await anyio.to_thread.run_sync(state.purge_expired)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(retention)
            try:
                yield
            finally:
                tasks.cancel_scope.cancel()
        state.close()

    return lifespan


def create_app(predictor: ResultMaker, settings: ServeSettings | None = None, *,
               store: WorklistStore | None = None) -> FastAPI:
    """Build the FastAPI app around one loaded Predictor.

    Results go to ``store`` when given (the caller closes it), else to a worklist database opened on
    ``settings.db`` (in memory when that is None).

    Raises:
        StoreError: the worklist database cannot be opened (or was written by a newer pneumoscan).
    """
    state = ServerState(predictor, settings or ServeSettings(), store)
    app = FastAPI(
        title="pneumoscan",
        version=__version__,
        description="Pneumonia risk on pediatric chest X-rays, with heatmaps of the evidence. " + DISCLAIMER,
        lifespan=_lifespan(state),
        openapi_tags=TAGS,
        docs_url=None, redoc_url=None,  # FastAPI's own pages load from CDNs: see routes.docs (offline)
    )
    app.state.pneumoscan = state
    app.add_middleware(SecurityHeaders)  # CSP, nosniff, no framing, no referrer; /api: no-store
    _add_error_handlers(app)
    app.include_router(docs_router(app.title, app.openapi_url or "/openapi.json"))  # before the mounts: see there
    app.mount(DOCS_STATIC, docs_static_files(), name="docs-static")  # before /static, which would shadow it
    app.mount("/static", static_files(), name="static")  # the page's files: no patient data, no token
    app.include_router(page_router(state))
    app.include_router(api_router(state))
    app.include_router(worklist_router(state))
    app.include_router(explain_router(state))
    app.include_router(outbox_router(state))
    return app
