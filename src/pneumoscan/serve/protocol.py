"""Connection-level timeouts that uvicorn lacks: a client must finish its request headers in bounded time.

uvicorn closes an idle keep-alive connection after ``timeout_keep_alive``, but a connection that was opened
and never sent anything, or that trickles its headers a byte at a time (slowloris), stays open for ever, and
every such connection holds a socket and memory. :func:`guarded_h11` returns uvicorn's h11 protocol with a
header deadline: from the moment a connection opens (or, on a kept-alive connection, from the first byte of
the next request) the client has ``header_timeout`` seconds to complete the request line and headers; then
it gets ``408 Request Timeout`` and the connection is closed. Stalled *bodies* are timed in the app, where
the request is known (:func:`pneumoscan.serve.body.read_body`).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["guarded_h11"]

log = logging.getLogger(__name__)

_408 = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\nconnection: close\r\n"
        b"content-length: 50\r\n\r\nrequest headers not received in time; reconnecting\n")


class _HeaderDeadlineH11(H11Protocol):
    header_timeout: float = 30.0

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            if self.conn.trailing_data[0]:
                self._arm()  # part of the next request's head has arrived: start (or keep) its clock
        else:
            self._disarm()  # the head is complete: the app times the body

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _expired(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        if self.cycle is None or self.cycle.response_complete:  # never write into a response in progress
            log.info("closing a connection from %s: no complete request head within %.0f s",
                     self.client[0] if self.client else "?", self.header_timeout)
            self.transport.write(_408)
        self.transport.close()


def guarded_h11(header_timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol class with a deadline of ``header_timeout`` seconds for each request head."""
    if not header_timeout > 0:
        raise ValueError(f"header_timeout must be positive, got {header_timeout}")
    return type("HeaderDeadlineH11", (_HeaderDeadlineH11,), {"header_timeout": float(header_timeout)})
