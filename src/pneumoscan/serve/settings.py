"""The server's limits and options, in one frozen dataclass (``pneumoscan serve`` sets them from its flags)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pneumoscan.gate.drift import MIN_IMAGES
from pneumoscan.io.budget import SERVICE_MAX_PIXELS

if TYPE_CHECKING:
    from pneumoscan.serve.security import Readers

__all__ = ["SERVER_MAX_PIXELS", "ServeSettings"]

#: The server's own pixel limit, lower than the library's (60 MP): a digital detector film is at most about
#: 4,300 x 4,300 (18.5 MP), and every decoded pixel of a 16-bit film costs about 20-30 bytes on the way. The DICOM
#: node has the same (:data:`pneumoscan.io.budget.SERVICE_MAX_PIXELS`).
SERVER_MAX_PIXELS = SERVICE_MAX_PIXELS


@dataclass(frozen=True)
class ServeSettings:
    """Limits and options of the web app and its HTTP server.

    The defaults are safe to expose behind a TLS reverse proxy; a token is still required off localhost
    (see :func:`pneumoscan.serve.server.run`).
    """

    #: Largest request body accepted, in bytes (all files of one request together).
    max_request_bytes: int = 64 * 1024 * 1024
    #: Largest image accepted, in pixels, checked from the header before decoding.
    max_pixels: int = SERVER_MAX_PIXELS
    #: Most files in one request.
    max_files: int = 32
    #: Threads running decoding and inference, for all requests together; more work waits its turn.
    workers: int = 2
    #: Intra-op threads of the model for each request in flight (ONNX Runtime's ``intra_op_num_threads``; with
    #: torch, ``torch.set_num_threads``). One per request by default: ``workers`` requests then use ``workers``
    #: cores, and no request's threads wait on another's.
    threads: int = 1
    #: The inference backend: ``"onnx"`` (ONNX Runtime, without torch until a heatmap is asked for) or ``"torch"``.
    backend: str = "onnx"
    #: Files of one request analysed at the same time (bounded parallelism per request).
    request_parallelism: int = 2
    #: Estimated memory that decoding may use at once, all in-flight images together, in bytes. An image whose
    #: own estimate is larger is refused with 413; others wait until enough is free.
    memory_budget_bytes: int = 1024 * 1024 * 1024
    #: Request bodies held in memory at once, all requests together; past it new uploads get 503.
    max_buffered_bytes: int = 256 * 1024 * 1024
    #: Folder to keep a copy of each upload in (server-made names, owner-only). None: uploads stay in memory.
    save_uploads: str | None = None
    #: Saved uploads older than this many days are deleted (at start-up and then at most hourly); None keeps them.
    upload_retention_days: float | None = 30.0
    #: Bearer token required on every route that takes or returns patient data (None: no authentication).
    token: str | None = field(default=None, repr=False)
    #: Readers with a token each (:func:`pneumoscan.serve.security.load_access`), instead of or beside ``token``:
    #: a reader's requests are recorded under the reader's name (results, reviews, audit rows). None: no readers.
    readers: Readers | None = field(default=None, repr=False, compare=False)
    #: Seconds a client has to send the request line and headers (from connecting, or from its first byte
    #: after a previous request); then the connection is closed with 408.
    header_timeout: float = 30.0
    #: Longest pause, in seconds, while a client sends the body; then the request ends with 408.
    body_timeout: float = 30.0
    #: Longest time, in seconds, to receive a whole body, however steadily it trickles in.
    body_deadline: float = 300.0
    #: Seconds an idle keep-alive connection stays open between requests.
    keep_alive_timeout: float = 5.0
    #: Most connections and requests at once; more get 503 (None: no limit).
    limit_concurrency: int | None = 256
    #: The drift check's rolling window: the most recent in-scope images it compares with the training films
    #: (``GET /api/v1/drift``); at least 50, the fewest the check accepts.
    drift_window: int = 200
    #: The worklist database: a SQLite file or any SQLAlchemy URL (:class:`pneumoscan.store.WorklistStore`).
    #: None: a database in memory, lost when the app stops (``pneumoscan serve`` passes the default file,
    #: ``worklist.db`` in the data folder).
    db: str | None = field(default=None, repr=False)  # a URL may hold a password
    #: Results (with their reviews) and audit rows older than this many days are deleted from the worklist
    #: database, at start-up and then daily; None keeps them for ever.
    retention_days: float | None = 365.0

    def __post_init__(self) -> None:
        for name in ("max_request_bytes", "max_pixels", "max_files", "workers", "threads", "request_parallelism",
                     "memory_budget_bytes", "max_buffered_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"ServeSettings.{name} must be at least 1, got {getattr(self, name)}")
        for name in ("header_timeout", "body_timeout", "body_deadline", "keep_alive_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ServeSettings.{name} must be positive, got {getattr(self, name)}")
        if self.backend not in ("onnx", "torch"):
            raise ValueError(f"ServeSettings.backend must be 'onnx' or 'torch', got {self.backend!r}")
        if self.drift_window < MIN_IMAGES:
            raise ValueError(f"ServeSettings.drift_window must be at least {MIN_IMAGES} (the fewest images a drift "
                             f"check accepts), got {self.drift_window}")
        for name in ("upload_retention_days", "retention_days"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"ServeSettings.{name} must be positive or None, got {value}")
