"""The page, its static files and the health check: no patient data, so no token."""

from __future__ import annotations

import mimetypes
from importlib import resources
from typing import Any

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

from pneumoscan.serve.state import ServerState

__all__ = ["STATIC_DIR", "page_router", "static_files"]

#: The page's HTML, scripts and style sheets.
STATIC_DIR = resources.files("pneumoscan").joinpath("serve/static")

# The page's scripts are ES modules, which a browser runs only when they are served as JavaScript (RFC 9239); some
# systems' MIME tables (the Windows registry) say text/plain for .js.
mimetypes.add_type("text/javascript", ".js")


def static_files() -> StaticFiles:
    """The app mounts this at ``/static`` (a router cannot carry a mount)."""
    return StaticFiles(directory=str(STATIC_DIR))


def page_router(state: ServerState) -> APIRouter:
    """``/`` (the page) and ``/healthz`` (liveness and readiness)."""
    router = APIRouter()

    @router.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(str(STATIC_DIR.joinpath("index.html")), media_type="text/html")

    @router.get("/healthz", summary="Liveness and readiness (no authentication)")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "model": state.predictor.model_name, "model_version": state.predictor.version,
                "auth": state.auth.enabled}

    return router
