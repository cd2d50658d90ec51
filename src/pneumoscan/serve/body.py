"""Request bodies: read within the size, memory and time limits, and parse the multipart upload into files."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from pneumoscan.serve.state import ServerState

__all__ = ["BadRequest", "display_name", "parse_files", "read_body"]


class BadRequest(Exception):
    """A request refused as a whole: answered with ``status`` and ``{"detail": message}`` (and, with ``close``,
    ``Connection: close``) by the app's error handler."""

    def __init__(self, status: int, message: str, *, close: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.close = close


def display_name(name: str | None, index: int) -> str:
    """A safe label for messages and cards: the client's base name, printable, at most 120 characters."""
    base = (name or "").replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable()).strip()
    return (base or f"upload-{index + 1}")[:120]


async def read_body(request: Request, state: ServerState) -> bytes:
    """The whole body, within the size limit, the server-wide buffered-bytes limit and the time limits.

    Raises:
        BadRequest: 413 too large, 503 too much buffered already, 408 the client paused or took too long.
        ClientDisconnect: the client went away.
    """
    settings = state.settings
    limit = settings.max_request_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BadRequest(413, f"request is {int(declared):,} bytes; the limit is {limit:,} bytes", close=True)
    chunks: list[bytes] = []
    size = 0
    deadline = anyio.current_time() + settings.body_deadline
    stream = request.stream().__aiter__()
    try:
        while True:
            wait = min(settings.body_timeout, deadline - anyio.current_time())
            try:
                with anyio.fail_after(max(wait, 0.0)):
                    chunk = await stream.__anext__()
            except StopAsyncIteration:
                break
            except TimeoutError:
                why = (f"no data for {settings.body_timeout:g} s" if wait == settings.body_timeout
                       else f"the upload took longer than {settings.body_deadline:g} s")
                raise BadRequest(408, f"request body not received in time: {why}", close=True) from None
            size += len(chunk)
            if size > limit:
                raise BadRequest(413, f"request is larger than the limit of {limit:,} bytes", close=True)
            if state.buffered + len(chunk) > settings.max_buffered_bytes:
                raise BadRequest(503, "the server is receiving too many uploads at once; try again shortly",
                                 close=True)
            state.buffered += len(chunk)
            chunks.append(chunk)
    finally:
        state.buffered -= sum(len(c) for c in chunks)  # the caller counts the parsed files while it holds them
    return b"".join(chunks)


async def parse_files(request: Request, state: ServerState) -> list[tuple[str, bytes]]:
    """The uploaded files as ``(safe display name, bytes)``, in the order sent.

    Raises:
        BadRequest: 415 not multipart, 400 malformed or no files, and whatever :func:`read_body` raises.
    """
    settings = state.settings
    ctype = request.headers.get("content-type", "")
    if not ctype.startswith("multipart/form-data"):
        raise BadRequest(415, "send the images as multipart/form-data with one or more 'files' fields")
    body = await read_body(request, state)

    async def stream() -> AsyncIterator[bytes]:
        yield body
        yield b""

    parser = MultiPartParser(request.headers, stream(), max_files=settings.max_files, max_fields=100)
    # Keep every part in memory: the body is already bounded by max_request_bytes.
    parser.spool_max_size = settings.max_request_bytes + 1
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise BadRequest(400, f"malformed multipart upload: {exc.message}") from exc
    files: list[tuple[str, bytes]] = []
    try:
        for i, (_key, value) in enumerate(form.multi_items()):
            if isinstance(value, UploadFile):
                files.append((display_name(value.filename, i), await value.read()))
    finally:
        await form.close()
    if not files:
        raise BadRequest(400, "no files in the upload; send one or more files in the 'files' field")
    return files
