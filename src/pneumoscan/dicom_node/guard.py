"""What a connection may cost the node before, and while, it is an association (:class:`NodeAE` builds the server).

* **The door.** A new connection waits here, outside pynetdicom (no association yet, so it counts toward no
  association limit), until its first byte arrives, at most ``association_timeout`` seconds; then it is closed. At
  most ``per_peer`` connections from one IP address, and ``total`` in all, may wait so: a newer one closes the
  oldest waiting one. A real sender speaks within milliseconds of connecting, so silent sockets cannot lock it out.
* **The PDU guard.** Every PDU's declared length is read from its 6-byte header before pynetdicom reads (and
  buffers) the rest: at most :data:`MAX_REQUEST_PDU` for an A-ASSOCIATE-RQ (and every PDU but data), the maximum PDU
  size the node advertises (plus :data:`PDU_SLACK`) for P-DATA-TF. More closes the connection at once.
* The A-ASSOCIATE-RQ must then be complete within ``association_timeout`` too (pynetdicom's ACSE timeout, set by the
  node), and the associations themselves are limited by the node (in all and per peer, :mod:`.scp`).

Each refusal is one log line that names the limit (at most one line per peer and limit every
:data:`LOG_EVERY_S` seconds, with the count of those not logged).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import OrderedDict
from typing import Any

from pynetdicom import AE
from pynetdicom.transport import ThreadedAssociationServer

__all__ = ["LOG_EVERY_S", "MAX_REQUEST_PDU", "PDU_SLACK", "Door", "NodeAE", "guard_pdus"]

log = logging.getLogger("pneumoscan.dicom_node")

#: The largest PDU accepted other than P-DATA-TF: an A-ASSOCIATE-RQ with many presentation contexts and user
#: identity is a few KiB; 64 KiB is far above any legitimate one.
MAX_REQUEST_PDU = 64 * 1024
#: Bytes a P-DATA-TF PDU may exceed the advertised maximum PDU size by (senders that count a PDV header outside it).
PDU_SLACK = 64
#: A repeated refusal (same peer, same limit) is logged at most once in this many seconds.
LOG_EVERY_S = 10.0

_PDU_NAMES = {0x01: "A-ASSOCIATE-RQ", 0x02: "A-ASSOCIATE-AC", 0x03: "A-ASSOCIATE-RJ", 0x04: "P-DATA-TF",
              0x05: "A-RELEASE-RQ", 0x06: "A-RELEASE-RP", 0x07: "A-ABORT"}


class _Throttle:
    """At most one log line per key every :data:`LOG_EVERY_S` seconds; the next one says how many were skipped."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str], tuple[float, int]] = {}

    def warn(self, key: tuple[str, str], message: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            last, skipped = self._last.get(key, (-LOG_EVERY_S, 0))
            if now - last < LOG_EVERY_S:
                self._last[key] = (last, skipped + 1)
                return
            self._last[key] = (now, 0)
            if len(self._last) > 4096:  # many peers: forget the oldest
                for old in list(self._last)[:2048]:
                    del self._last[old]
        suffix = f" ({skipped} more like it not logged)" if skipped else ""
        log.warning(message + suffix, *args)


_throttle = _Throttle()


class Door:
    """Holds each new connection until it sends its first byte (see the module's docstring).

    ``per_peer``: connections one IP address may have waiting; ``total``: in all; ``timeout``: seconds a connection
    may wait silent.
    """

    def __init__(self, *, per_peer: int, total: int, timeout: float) -> None:
        self.per_peer = per_peer
        self.total = total
        self.timeout = timeout
        self._lock = threading.Lock()
        self._waiting: OrderedDict[socket.socket, str] = OrderedDict()  # oldest first
        self._closed = False

    def wait(self, sock: socket.socket, address: Any) -> bool:
        """Wait (in the connection's own thread) for the first byte: True when it came, False when the connection
        timed out, was closed by the peer, or was closed here to make room (the caller then closes it)."""
        peer = str(address[0]) if isinstance(address, tuple) else str(address)
        victims: list[tuple[socket.socket, str, str]] = []
        with self._lock:
            if self._closed:
                return False
            self._waiting[sock] = peer
            same = [s for s, p in self._waiting.items() if p == peer]
            if len(same) > self.per_peer:
                victims.append((same[0], peer, "per_peer"))
            if len(self._waiting) - len(victims) > self.total:
                oldest = next(s for s in self._waiting if all(s is not v[0] for v in victims))
                victims.append((oldest, self._waiting[oldest], "total"))
            for victim, _, _ in victims:
                self._waiting.pop(victim, None)
        for victim, who, limit in victims:
            _close(victim)
            if limit == "per_peer":
                _throttle.warn((who, "door-peer"), "connection from %s closed before its association request: "
                               "more than %d connections from this address were waiting silent "
                               "(--max-associations-per-peer)", who, self.per_peer)
            else:
                _throttle.warn((who, "door-total"), "connection from %s closed before its association request: "
                               "more than %d connections were waiting silent (--max-associations)", who, self.total)
        try:
            return self._first_byte(sock, peer)
        finally:
            with self._lock:
                self._waiting.pop(sock, None)

    def _first_byte(self, sock: socket.socket, peer: str) -> bool:
        previous = sock.gettimeout()
        try:
            sock.settimeout(self.timeout)
            return sock.recv(1, socket.MSG_PEEK) != b""
        except TimeoutError:
            _throttle.warn((peer, "door-timeout"), "connection from %s closed: no association request within "
                           "%g s (--association-timeout)", peer, self.timeout)
            return False
        except OSError:
            return False
        finally:
            try:
                sock.settimeout(previous)
            except OSError:
                pass

    def close_all(self) -> None:
        """Close every waiting connection and admit no more (the node is stopping)."""
        with self._lock:
            self._closed = True
            waiting, self._waiting = list(self._waiting), OrderedDict()
        for sock in waiting:
            _close(sock)


def _close(sock: socket.socket) -> None:
    """Wake the thread blocked on ``sock`` (its recv returns b"") and end the connection."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _NodeServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the :class:`Door` in front of every association."""

    door: Door | None = None

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        if self.door is not None and not self.door.wait(request, client_address):
            self.shutdown_request(request)
            return
        super().process_request_thread(request, client_address)

    def server_close(self) -> None:
        if self.door is not None:
            self.door.close_all()  # so that closing does not wait for silent connections to time out
        super().server_close()


class NodeAE(AE):
    """pynetdicom's AE whose ``start_server`` puts ``door`` in front of the associations."""

    door: Door | None = None

    def make_server(self, address: Any, ae_title: str | None = None, contexts: Any = None, ssl_context: Any = None,
                    evt_handlers: Any = None, server_class: Any = None, **kwargs: Any) -> Any:
        if server_class is ThreadedAssociationServer:
            server_class = _NodeServer
        server = super().make_server(address, ae_title=ae_title, contexts=contexts, ssl_context=ssl_context,
                                     evt_handlers=evt_handlers, server_class=server_class, **kwargs)
        if isinstance(server, _NodeServer):
            server.door = self.door
        return server


class _PduGuard:
    """Replaces an association socket's ``recv``: checks each PDU header's declared length before the body is read."""

    def __init__(self, assoc: Any, sock: Any, max_pdu: int) -> None:
        self._assoc = assoc
        self._sock = sock
        self._recv = sock.recv
        self._max_pdata = max_pdu + PDU_SLACK
        self._body_next = False

    def __call__(self, nr_bytes: int) -> Any:
        if self._body_next:  # the DUL reads a PDU's body right after its header
            self._body_next = False
            return self._recv(nr_bytes)
        data = self._recv(nr_bytes)
        if nr_bytes == 6 and len(data) == 6 and data[0] in _PDU_NAMES:
            kind, length = data[0], int.from_bytes(bytes(data[2:6]), "big")
            established = bool(getattr(self._assoc, "is_established", False))
            limit = self._max_pdata if kind == 0x04 and established else MAX_REQUEST_PDU
            if length > limit:
                self._refuse(kind, length, limit)
                if not established:
                    # The association's thread waits for the A-ASSOCIATE-RQ; None is what it gets on a timeout, so it
                    # ends now rather than hold a place among the associations for the ACSE timeout.
                    self._assoc.dul.to_user_queue.put(None)
                # pynetdicom's answer to a failed read: "transport closed" (Evt17), which closes the socket at once;
                # nothing of the PDU's body is read or buffered.
                raise OSError(f"PDU of {length} bytes refused (limit {limit})")
            self._body_next = True
        return data

    def _refuse(self, kind: int, length: int, limit: int) -> None:
        try:
            peer = str(self._assoc.requestor.address)
        except Exception:  # noqa: BLE001
            peer = "?"
        what = "(the maximum PDU size this node advertises, --max-pdu)" if limit != MAX_REQUEST_PDU else \
            "for that PDU type"
        _throttle.warn((peer, f"pdu-{kind}"), "connection from %s closed: its %s PDU declares %s bytes; this node "
                       "accepts at most %s %s", peer, _PDU_NAMES[kind], f"{length:,}", f"{limit:,}", what)


def guard_pdus(assoc: Any, max_pdu: int) -> None:
    """Put the PDU guard on ``assoc``'s socket (call it when the connection opens, before the association reads)."""
    sock = assoc.dul.socket
    if sock is not None and not isinstance(getattr(sock, "recv", None), _PduGuard):
        sock.recv = _PduGuard(assoc, sock, max_pdu)
