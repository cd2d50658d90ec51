"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), served offline: hospital networks are often air-gapped, and
FastAPI's own pages load their scripts, style sheets, fonts and favicon from CDNs.

The assets come from the ``fastapi-offline`` package (Swagger UI 5 and ReDoc 2, as files in its ``static``
folder; only those files are used, not its app factory), mounted at :data:`DOCS_STATIC`. ReDoc's script is
served by a route instead, with the one remote URL it fetches (Redocly's logo in the side menu, which hides
itself when it fails to load) taken out. No patient data, so no token (the OpenAPI document itself is open too,
as before).

Each page sets its own Content-Security-Policy (:func:`~pneumoscan.serve.headers.content_security_policy`):
Swagger UI's one inline script is allowed by its SHA-256, computed from the page as served (it names the
OpenAPI URL, which follows the root path); ReDoc writes its styles into ``<style>`` elements at run time and
runs its search in a worker made from a ``blob:`` URL, so its page allows inline styles and ``blob:`` workers
(never an inline script)."""

from __future__ import annotations

from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

from pneumoscan.serve.headers import content_security_policy, inline_hashes

__all__ = ["DOCS_STATIC", "docs_router", "docs_static_files"]

#: Where the app mounts the documentation pages' assets.
DOCS_STATIC = "/static/docs"


#: The only remote resource ReDoc's bundle fetches by itself.
_REDOC_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"


def _assets() -> Traversable:
    return resources.files("fastapi_offline").joinpath("static")


def docs_static_files() -> StaticFiles:
    """Swagger UI's and ReDoc's files, from the ``fastapi-offline`` package."""
    return StaticFiles(directory=str(_assets()))


@cache
def _redoc_js() -> bytes:
    """ReDoc's bundle without the remote logo (an empty ``src`` fetches nothing; the image then hides itself)."""
    return _assets().joinpath("redoc.standalone.js").read_bytes().replace(_REDOC_LOGO, b"")


def docs_router(title: str, openapi_url: str) -> APIRouter:
    """``/docs`` and ``/redoc``, every asset from this server (no CDN, no Google Fonts, no remote favicon).

    Include it before mounting :func:`docs_static_files`, so that its ReDoc script route wins over the mount."""
    router = APIRouter()

    @router.get(f"{DOCS_STATIC}/redoc.standalone.js", include_in_schema=False)
    async def redoc_js() -> Response:
        return Response(_redoc_js(), media_type="text/javascript", headers={"cache-control": "max-age=3600"})

    @router.get("/docs", include_in_schema=False)
    async def swagger(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_swagger_ui_html(
            openapi_url=root + openapi_url, title=f"{title}: API documentation",
            swagger_js_url=f"{root}{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{root}{DOCS_STATIC}/favicon.png")
        return _with_policy(page)

    @router.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        page = get_redoc_html(
            openapi_url=root + openapi_url, title=f"{title}: API reference",
            redoc_js_url=f"{root}{DOCS_STATIC}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{DOCS_STATIC}/favicon.png", with_google_fonts=False)
        page.headers["content-security-policy"] = content_security_policy(style=["'unsafe-inline'"], worker="blob:")
        return page

    return router


def _with_policy(page: HTMLResponse) -> HTMLResponse:
    """``page`` with a Content-Security-Policy that allows its own inline scripts and styles by their hashes."""
    html = bytes(page.body).decode("utf-8")
    page.headers["content-security-policy"] = content_security_policy(
        script=inline_hashes(html, "script"), style=inline_hashes(html, "style"))
    return page
