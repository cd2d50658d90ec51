"""Security headers on every response (one ASGI middleware, :class:`SecurityHeaders`).

- ``Content-Security-Policy``: :data:`PAGE_CSP` unless the route set its own. The page loads everything from this
  server (ES modules, style sheets, no inline script or style); films and heatmaps are ``data:`` URIs and the
  viewer shows a local file through a ``blob:`` URL. ``/docs`` and ``/redoc`` set their own
  (:func:`content_security_policy` with the SHA-256 of their inline script or style, see :mod:`.routes.docs`).
  ``frame-ancestors 'none'`` (and ``X-Frame-Options: DENY`` for older browsers): no other site may frame the page.
- ``X-Content-Type-Options: nosniff``: a browser never runs an upload's echo or a JSON body as something else.
- ``Referrer-Policy: no-referrer``: links out of the page never carry its URL (which may hold filters).
- ``Cache-Control: no-store`` on every ``/api/v1`` response: they carry patient data (results, the worklist,
  the audit trail, the outbox), which a shared or browser cache must not keep.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from typing import Any

from starlette.datastructures import MutableHeaders

__all__ = ["API_PREFIX", "PAGE_CSP", "SecurityHeaders", "content_security_policy", "inline_hashes"]

#: Responses under this path carry patient data: never cached.
API_PREFIX = "/api/"

_BASE = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self'",
    "img-src": "'self' data: blob:",
    "font-src": "'self'",
    "connect-src": "'self'",
    "worker-src": "'none'",
    "object-src": "'none'",
    "base-uri": "'none'",
    "form-action": "'self'",
    "frame-ancestors": "'none'",
}


def content_security_policy(*, script: Iterable[str] = (), style: Iterable[str] = (), worker: str | None = None
                            ) -> str:
    """The page's policy, with extra ``script-src`` and ``style-src`` sources (hashes: ``'sha256-...'``) and a
    ``worker-src`` in place of ``'none'``."""
    policy = dict(_BASE)
    for name, extra in (("script-src", script), ("style-src", style)):
        extra = [e for e in extra if e]
        if extra:
            policy[name] = " ".join([policy[name], *extra])
    if worker:
        policy["worker-src"] = worker
    return "; ".join(f"{k} {v}" for k, v in policy.items())


#: The page's policy: everything from this server, no inline script or style.
PAGE_CSP = content_security_policy()

_INLINE = re.compile(r"<(script|style)(?P<attrs>[^>]*)>(?P<body>.*?)</\1\s*>", re.DOTALL | re.IGNORECASE)


def inline_hashes(html: str, tag: str) -> list[str]:
    """The CSP sources (``'sha256-<base64>'``) of every inline ``<tag>`` (``script`` or ``style``) in ``html``; a
    script with a ``src`` is not inline."""
    out = []
    for m in _INLINE.finditer(html):
        if m.group(1).lower() != tag or (tag == "script" and re.search(r"\bsrc\s*=", m.group("attrs"))):
            continue
        digest = base64.b64encode(hashlib.sha256(m.group("body").encode("utf-8")).digest()).decode("ascii")
        out.append(f"'sha256-{digest}'")
    return out


_FIXED = (("x-content-type-options", "nosniff"), ("x-frame-options", "DENY"), ("referrer-policy", "no-referrer"))


class SecurityHeaders:
    """ASGI middleware: the headers above on every HTTP response (a route's own ``Content-Security-Policy``
    wins; ``/api/`` responses are always ``no-store``)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        api = path.startswith(API_PREFIX)

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _FIXED:
                    headers[name] = value
                if "content-security-policy" not in headers:
                    headers["content-security-policy"] = PAGE_CSP
                if api:
                    headers["cache-control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)
