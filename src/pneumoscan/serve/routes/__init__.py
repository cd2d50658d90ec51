"""The web app's routes, one :class:`~fastapi.APIRouter` factory per area, each taking the shared
:class:`~pneumoscan.serve.state.ServerState`: :mod:`.page` (the page, its static files, the health check; open)
and :mod:`.api` (``/api/v1``; behind the token when one is configured), :mod:`.worklist` (the stored worklist,
reviews and audit trail under ``/api/v1``; behind the token too), :mod:`.explain` (``/api/v1/explain``, the
viewer's full-resolution film and heatmap; behind the token), :mod:`.outbox` (``/api/v1/outbox``, the DICOM node's
backlog for the PACS; behind the token), :mod:`.docs` (``/docs`` and ``/redoc``, offline; open)."""

from __future__ import annotations

from pneumoscan.serve.routes.api import api_router
from pneumoscan.serve.routes.docs import DOCS_STATIC, docs_router, docs_static_files
from pneumoscan.serve.routes.explain import explain_router
from pneumoscan.serve.routes.outbox import outbox_router
from pneumoscan.serve.routes.page import STATIC_DIR, page_router, static_files
from pneumoscan.serve.routes.worklist import worklist_router

__all__ = ["DOCS_STATIC", "STATIC_DIR", "api_router", "docs_router", "docs_static_files", "explain_router",
           "outbox_router", "page_router", "static_files", "worklist_router"]
