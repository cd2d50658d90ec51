"""Who may call the server, and keeping patients' names out of its logs.

* Bearer-token authentication (``Authorization: Bearer <token>``) on every route that takes or returns
  patient data. One shared token (``$PNEUMOSCAN_API_TOKEN``, or a ``--token-file`` whose first line is the
  token), or one token per reader (a ``--token-file`` of ``NAME TOKEN`` lines, :func:`parse_readers`): the
  reader's name is then recorded on every result, review and audit row the reader's requests make. Tokens are
  compared in constant time and never logged or stored.
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

__all__ = ["MAX_READER_NAME", "MIN_TOKEN_LENGTH", "RESERVED_NAMES", "TOKEN_ENV_VAR", "Readers", "TokenAuth",
           "check_exposure", "is_loopback", "load_access", "load_token", "log_id", "parse_readers", "reader_of"]

log = logging.getLogger(__name__)

TOKEN_ENV_VAR = "PNEUMOSCAN_API_TOKEN"
#: Shorter tokens are refused: a token is the only thing between the network and patient data.
MIN_TOKEN_LENGTH = 16
#: Longest reader name kept (the worklist database keeps 128 characters of a reviewer or client).
MAX_READER_NAME = 64
#: Names that already mean something in the worklist's ``client`` and ``reviewer`` columns: no request
#: authenticated (``local``), the retention purge (``retention``); ``token-...`` is a shared token's hash.
RESERVED_NAMES = ("local", "retention")
_MAKE_ONE = "make one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"


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


class Readers:
    """The readers who may call the server, each with a token of their own (from :func:`parse_readers`).

    :meth:`match` finds the reader a presented token belongs to, comparing it with every reader's token in constant
    time. The tokens never show: not in ``repr``, not in logs, not in the worklist database (only the names do).
    """

    def __init__(self, readers: dict[str, str]) -> None:
        if not readers:
            raise ValueError("Readers needs at least one reader")
        self._readers = tuple((name, token.encode("utf-8")) for name, token in readers.items())

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self._readers)

    def __len__(self) -> int:
        return len(self._readers)

    def __repr__(self) -> str:
        return f"Readers({', '.join(self.names)})"

    def match(self, presented: bytes) -> str | None:
        """The name of the reader whose token ``presented`` is, or None; every token is compared (no early exit)."""
        found = None
        for name, token in self._readers:
            if hmac.compare_digest(presented, token):
                found = name
        return found


def parse_readers(text: str, source: str) -> Readers:
    """A token file of readers: one ``NAME TOKEN`` line per reader. The token is the line's last field (at least
    :data:`MIN_TOKEN_LENGTH` characters); the name is everything before it (spaces inside are kept, e.g.
    ``Dr A. Lee  3q...``). Blank lines and lines starting with ``#`` are skipped.

    Raises:
        ConfigError: a line without a name or token, a short token, a name too long, reserved or with control
            characters, the same name twice (letter case aside) or the same token twice; the message names
            ``source`` and the line(s), never a token.
    """
    readers: dict[str, str] = {}
    seen_names: dict[str, int] = {}
    seen_tokens: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = stripped.rsplit(None, 1)
        where = f"{source}, line {number}"
        if len(fields) != 2:
            raise ConfigError(f"{where}: expected 'NAME TOKEN' (a reader's name, then their token), found one field")
        name, token = " ".join(fields[0].split()), fields[1]
        if len(token) < MIN_TOKEN_LENGTH:
            raise ConfigError(f"{where}: the token of {name!r} is shorter than {MIN_TOKEN_LENGTH} characters; "
                              + _MAKE_ONE)
        if len(name) > MAX_READER_NAME or not name.isprintable():
            raise ConfigError(f"{where}: a reader's name is at most {MAX_READER_NAME} printable characters")
        key = name.casefold()
        if key in RESERVED_NAMES or key.startswith("token-"):
            raise ConfigError(f"{where}: {name!r} cannot be a reader's name (it means something else in the "
                              f"worklist: {', '.join(RESERVED_NAMES)}, token-...)")
        if key in seen_names:
            raise ConfigError(f"{where}: the reader {name!r} is already on line {seen_names[key]}; one token per "
                              "reader, one reader per token")
        if token in seen_tokens:
            raise ConfigError(f"{where}: this token is already on line {seen_tokens[token]}; every reader needs a "
                              "token of their own (" + _MAKE_ONE + ")")
        seen_names[key], seen_tokens[token] = number, number
        readers[name] = token
    if not readers:
        raise ConfigError(f"{source}: no reader found; write one 'NAME TOKEN' line per reader")
    return Readers(readers)


def load_access(token_file: str | os.PathLike[str] | None = None, *, environ: dict[str, str] | None = None
                ) -> tuple[str | None, Readers | None]:
    """Who may call the server: ``(shared token, readers)``, at most one of them set.

    ``token_file`` holds either one shared token on its first line (the format of earlier versions; any further
    lines are ignored, as they were) or one ``NAME TOKEN`` line per reader (:func:`parse_readers`): a first line
    that is a single word is a shared token, anything else a readers file. Without ``token_file``:
    ``$PNEUMOSCAN_API_TOKEN`` as the shared token, or ``(None, None)``.

    Raises:
        ConfigError: the file cannot be read, or what it holds is not a valid token or readers list.
    """
    if token_file is None:
        return load_token(None, environ=environ), None
    path = Path(token_file)
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--token-file {path}: cannot read it ({exc})") from exc
    lines = text.splitlines()
    first = lines[0].strip() if lines else ""
    if first and not first.startswith("#") and len(first.split()) == 1:
        return load_token(path, environ=environ), None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s can be read by other users; restrict it with: chmod 600 %s", path, path)
    readers = parse_readers(text, f"--token-file {path}")
    log.info("%d reader(s) may use the server, each with a token of their own", len(readers))
    return None, readers


def reader_of(request: Request, default: str = "local") -> str:
    """Who made ``request``, as :class:`TokenAuth` found it: a reader's name, ``token-`` and the shared token's
    short hash, or ``local`` (no authentication); ``default`` for a request that did not pass through it."""
    return getattr(request.state, "reader", None) or default


def check_exposure(host: str, token: str | Readers | None, *, insecure_no_auth: bool) -> None:
    """Refuse to serve patient data off localhost without a token (a shared one, or readers' own).

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
        "print(secrets.token_urlsafe(32))')) or pass --token-file PATH (one token, or one 'NAME TOKEN' line per "
        "reader); clients then send "
        "'Authorization: Bearer <token>'. Put it behind a TLS reverse proxy (see the README). To serve without "
        "authentication anyway, on a network you trust, add --insecure-no-auth")


class TokenAuth:
    """A FastAPI dependency: with a token or readers set, requests must carry ``Authorization: Bearer <token>``.

    A request that passes gets ``request.state.reader`` (:func:`reader_of`): the reader's name when the token is
    a reader's, else :attr:`client_id`.
    """

    def __init__(self, token: str | None, readers: Readers | None = None) -> None:
        self._token = token.encode("utf-8") if token else None
        self._readers = readers or None
        #: Who made a request when no reader is named: ``token-`` and 10 hex digits of the shared token's
        #: SHA-256 (never the token), or ``local`` when the server has no token.
        self.client_id = "token-" + hashlib.sha256(self._token).hexdigest()[:10] if self._token else "local"

    @property
    def enabled(self) -> bool:
        return self._token is not None or self._readers is not None

    @property
    def readers(self) -> tuple[str, ...]:
        """The readers' names (empty with one shared token or none)."""
        return self._readers.names if self._readers is not None else ()

    def identify(self, request: Request) -> str | None:
        """Who the request is from (a reader's name, :attr:`client_id`), or None when it may not pass."""
        if not self.enabled:
            return self.client_id
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not credentials:
            return None
        presented = credentials.strip().encode("utf-8", "surrogatepass")
        if self._readers is not None:
            name = self._readers.match(presented)
            if name is not None:
                return name
        if self._token is not None and hmac.compare_digest(presented, self._token):
            return self.client_id
        return None

    def check(self, request: Request) -> bool:
        """True when the request may pass (no token configured, or a right one presented)."""
        return self.identify(request) is not None

    async def __call__(self, request: Request) -> None:
        who = self.identify(request)
        if who is None:
            raise Unauthorized()
        request.state.reader = who


class Unauthorized(Exception):
    """Raised by :class:`TokenAuth`; the app turns it into 401 with ``WWW-Authenticate: Bearer``."""


def unauthorized_response() -> JSONResponse:
    return JSONResponse(
        {"detail": "authentication required: send 'Authorization: Bearer <token>' with this server's API token"},
        status_code=401, headers={"WWW-Authenticate": 'Bearer realm="pneumoscan"'},
    )
