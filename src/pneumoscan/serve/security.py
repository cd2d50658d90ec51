"""Who may call the server, and keeping patients' names out of its logs.

* Bearer-token authentication (``Authorization: Bearer <token>``) on every route that takes or returns
  patient data. The token comes from ``$PNEUMOSCAN_API_TOKEN`` or ``--token-file``; it is compared in
  constant time and never logged.
* A server bound to anything but a loopback address refuses to start without a token, unless the operator
  says ``--insecure-no-auth`` in so many words.
* File names often hold patient names, so logs name an upload by a short hash of its name.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import stat
from pathlib import Path

from fastapi import Request
from fastapi.responses import JSONResponse

from pneumoscan.config import ConfigError
from pneumoscan.utils import is_loopback

__all__ = ["MIN_TOKEN_LENGTH", "TOKEN_ENV_VAR", "TokenAuth", "check_exposure", "is_loopback", "load_token",
           "log_id"]

log = logging.getLogger(__name__)

TOKEN_ENV_VAR = "PNEUMOSCAN_API_TOKEN"
#: Shorter tokens are refused: a token is the only thing between the network and patient data.
MIN_TOKEN_LENGTH = 16


def log_id(name: str | None) -> str:
    """A stable pseudonym for a client's file name in logs: ``upload-`` and 10 hex digits of its SHA-256."""
    return "upload-" + hashlib.sha256((name or "").encode("utf-8", "surrogatepass")).hexdigest()[:10]


def load_token(token_file: str | os.PathLike[str] | None = None, *, environ: dict[str, str] | None = None) -> str | None:
    """The API token from ``token_file`` (first line, stripped) or else ``$PNEUMOSCAN_API_TOKEN``; None if neither.

    Raises:
        ConfigError: the file is missing or unreadable, the token is shorter than :data:`MIN_TOKEN_LENGTH`
            or holds white space.
    """
    env = os.environ if environ is None else environ
    if token_file is not None:
        path = Path(token_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
            mode = path.stat().st_mode
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--token-file {path}: cannot read the token ({exc})") from exc
        token, source = (lines[0].strip() if lines else ""), f"--token-file {path}"
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s can be read by other users; restrict it with: chmod 600 %s", path, path)
    else:
        token, source = env.get(TOKEN_ENV_VAR, "").strip(), f"${TOKEN_ENV_VAR}"
        if not token:
            return None
    if len(token) < MIN_TOKEN_LENGTH or any(ch.isspace() for ch in token):
        raise ConfigError(f"{source}: the API token must be at least {MIN_TOKEN_LENGTH} characters without spaces; "
                          "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return token


def check_exposure(host: str, token: str | None, *, insecure_no_auth: bool) -> None:
    """Refuse to serve patient data off localhost without a token.

    Raises:
        ConfigError: ``host`` is not a loopback address, no token is set and ``insecure_no_auth`` is False.
    """
    if token is not None or is_loopback(host):
        return
    if insecure_no_auth:
        log.warning("serving on %s WITHOUT authentication (--insecure-no-auth): anyone who can reach this port "
                    "can upload images and read results", host)
        return
    raise ConfigError(
        f"--host {host} makes the server reachable from other machines, and it handles patient data, so it needs "
        f"an API token: set ${TOKEN_ENV_VAR} (e.g. export {TOKEN_ENV_VAR}=$(python -c 'import secrets; "
        "print(secrets.token_urlsafe(32))')) or pass --token-file PATH; clients then send "
        "'Authorization: Bearer <token>'. Put it behind a TLS reverse proxy (see the README). To serve without "
        "authentication anyway, on a network you trust, add --insecure-no-auth")


class TokenAuth:
    """A FastAPI dependency: with a token set, requests must carry ``Authorization: Bearer <token>``."""

    def __init__(self, token: str | None) -> None:
        self._token = token.encode("utf-8") if token else None
        #: Who made a request, for the worklist database and its audit trail: ``token-`` and 10 hex digits of
        #: the token's SHA-256 (never the token), or ``local`` when the server has no token.
        self.client_id = "token-" + hashlib.sha256(self._token).hexdigest()[:10] if self._token else "local"

    @property
    def enabled(self) -> bool:
        return self._token is not None

    def check(self, request: Request) -> bool:
        """True when the request may pass (no token configured, or the right one presented)."""
        if self._token is None:
            return True
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credentials:
            return False
        return hmac.compare_digest(credentials.strip().encode("utf-8", "surrogatepass"), self._token)

    async def __call__(self, request: Request) -> None:
        if not self.check(request):
            raise Unauthorized()


class Unauthorized(Exception):
    """Raised by :class:`TokenAuth`; the app turns it into 401 with ``WWW-Authenticate: Bearer``."""


def unauthorized_response() -> JSONResponse:
    return JSONResponse(
        {"detail": "authentication required: send 'Authorization: Bearer <token>' with this server's API token"},
        status_code=401, headers={"WWW-Authenticate": 'Bearer realm="pneumoscan"'},
    )
