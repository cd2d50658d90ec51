"""The web app's routes, one :class:`~fastapi.APIRouter` factory per area, each taking the shared
:class:`~pneumoscan.serve.state.ServerState`: :mod:`.page` (the page, its static files, the health check; open)
and :mod:`.api` (``/api/v1``; behind the token when one is configured)."""

from __future__ import annotations

from pneumoscan.serve.routes.api import api_router
from pneumoscan.serve.routes.page import STATIC_DIR, page_router, static_files

__all__ = ["STATIC_DIR", "api_router", "page_router", "static_files"]
