"""The FastAPI app factory: :func:`create_app` builds the shared state, the error handlers and the routes.

One :class:`~pneumoscan.predict.Predictor` is built at start-up. Routes (:mod:`.routes`) only check the input and
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
- with a token configured, every route that takes or returns patient data needs it (``/healthz`` does not).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from pneumoscan import __version__
from pneumoscan.constants import DISCLAIMER, INTENDED_USE
from pneumoscan.serve.body import BadRequest
from pneumoscan.serve.routes import api_router, page_router, static_files
from pneumoscan.serve.security import Unauthorized, unauthorized_response
from pneumoscan.serve.settings import ServeSettings
from pneumoscan.serve.state import ServerState

__all__ = ["DISCLAIMER", "INTENDED_USE", "create_app"]


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(BadRequest)
    async def _bad_request(_request: Request, exc: BadRequest) -> JSONResponse:
        headers = {"connection": "close"} if exc.close else None
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(Unauthorized)
    async def _unauthorized(_request: Request, _exc: Unauthorized) -> JSONResponse:
        return unauthorized_response()


def create_app(predictor: Any, settings: ServeSettings | None = None) -> FastAPI:
    """Build the FastAPI app around one loaded Predictor."""
    state = ServerState(predictor, settings or ServeSettings())
    app = FastAPI(
        title="pneumoscan",
        version=__version__,
        description="Pneumonia risk on pediatric chest X-rays, with Grad-CAM heatmaps. " + DISCLAIMER,
    )
    app.state.pneumoscan = state
    _add_error_handlers(app)
    app.mount("/static", static_files(), name="static")  # the page's files: no patient data, no token
    app.include_router(page_router(state))
    app.include_router(api_router(state))
    return app
