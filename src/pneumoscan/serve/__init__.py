"""The web app and REST API: upload X-rays, get the risk, the decision (or "not assessed" with the scope gate's
reason), a heatmap, a worklist, and the site's drift check.

Where things live: :mod:`.settings` (limits), :mod:`.app` (the FastAPI factory), :mod:`.routes` (one APIRouter
per area: :mod:`.routes.page`, :mod:`.routes.api`), :mod:`.state` (what the routes share), :mod:`.body` (reading
and parsing uploads), :mod:`.batch` (a request's files, in parallel, within the budget), :mod:`.analysis` (one
upload in, one result out), :mod:`.monitor` (the rolling drift window), :mod:`.budget` (memory budget),
:mod:`.security` (token, exposure check, log pseudonyms), :mod:`.headers` (CSP, nosniff, no framing, no-store),
:mod:`.params` (bounded ids, offsets and times), :mod:`.protocol` (header deadline), :mod:`.server` (uvicorn).
"""

from __future__ import annotations

from pneumoscan.constants import DISCLAIMER, INTENDED_USE
from pneumoscan.serve.app import create_app
from pneumoscan.serve.server import run, uvicorn_config
from pneumoscan.serve.settings import SERVER_MAX_PIXELS, ServeSettings

__all__ = ["DISCLAIMER", "INTENDED_USE", "SERVER_MAX_PIXELS", "ServeSettings", "create_app", "run", "uvicorn_config"]
