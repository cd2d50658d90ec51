"""A process-wide memory budget for decoding, so that many large images at once cannot exhaust memory: the web
server's (``serve``) and the DICOM node's (``dicom-listen``).

Each image's peak decoding memory is estimated from its header before any pixel is decoded
(:func:`estimate_decode_bytes`); :class:`MemoryBudget` admits images while their estimates fit and makes the
rest wait, and refuses outright an image that could never fit. Async callers (the server) use
:meth:`MemoryBudget.reserve`, threads (the node's associations) :meth:`MemoryBudget.hold`.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from pneumoscan.io.common import ImageInfo

__all__ = ["DEFAULT_MEMORY_BUDGET_BYTES", "SERVICE_MAX_PIXELS", "BudgetExceeded", "BudgetTimeout", "MemoryBudget",
           "estimate_decode_bytes"]

#: The default budget of the server and the node: 1 GiB of estimated decoding memory at once.
DEFAULT_MEMORY_BUDGET_BYTES = 1024 * 1024 * 1024
#: The pixel limit of the services (``serve``, ``dicom-listen``), lower than the library's (60 MP): a digital detector
#: film is at most about 4,300 x 4,300 (18.5 MP), and every decoded pixel of a 16-bit film costs about 20-30 bytes on
#: the way.
SERVICE_MAX_PIXELS = 25_000_000

#: Bytes per pixel at the peak of decoding and scoring one 4000 x 4000 image, measured as the growth of the
#: process's peak RSS: 3.9 for an 8-bit JPEG or PNG, 11.1 for a 16-bit PNG (one float32 buffer), 27.8 for a
#: 16-bit DICOM with a window (pydicom's float64 LUT steps). The estimates below are rounded up from those.
_BYTES_PER_PIXEL_8BIT = 8
_BYTES_PER_PIXEL_DEEP = 16
_BYTES_PER_PIXEL_DICOM = 32
#: A heatmap is upsampled to the film's size as float32 and blended.
_HEATMAP_BYTES_PER_PIXEL = 8
#: Fixed overhead per image (model activations at the input size, previews, PNG encoding).
_BASE_BYTES = 16 * 1024 * 1024
#: How often a waiting async caller looks again, so that a release from a thread admits it too.
_ASYNC_RECHECK_S = 0.25


def estimate_decode_bytes(info: ImageInfo, *, heatmap: bool = False) -> int:
    """Peak memory, in bytes, that decoding (and with ``heatmap`` explaining) this image is expected to use."""
    pixels = info.width * info.height
    if info.format == "DICOM":
        per_pixel = _BYTES_PER_PIXEL_DICOM
    elif info.bit_depth > 8 or info.mode in ("I", "F", "I;16", "I;16B", "I;16L", "I;16N"):
        per_pixel = _BYTES_PER_PIXEL_DEEP
    else:
        per_pixel = _BYTES_PER_PIXEL_8BIT
    per_pixel += _HEATMAP_BYTES_PER_PIXEL if heatmap else 0
    return _BASE_BYTES + pixels * per_pixel


class BudgetExceeded(Exception):
    """One image needs more than the whole budget."""


class BudgetTimeout(Exception):
    """The budget did not free enough room in the time a caller was willing to wait."""


class MemoryBudget:
    """Admit work while the sum of its estimated bytes stays within ``total``; the rest waits (FIFO-ish).

    Safe to share between threads and an event loop: ``used`` changes only under one lock.
    """

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError(f"memory budget must be positive, got {total}")
        self.total = int(total)
        self.used = 0
        self._lock = threading.Condition()
        self._cond: Any = None  # anyio.Condition, made in the event loop on first use

    def _take(self, nbytes: int) -> bool:
        with self._lock:
            if self.used + nbytes > self.total:
                return False
            self.used += nbytes
            return True

    def _give(self, nbytes: int) -> None:
        with self._lock:
            self.used -= nbytes
            self._lock.notify_all()

    def acquire(self, nbytes: int, timeout: float | None = None) -> None:
        """Take ``nbytes`` of the budget, waiting (in this thread) at most ``timeout`` seconds for room; give it back
        with :meth:`release`.

        Raises:
            BudgetExceeded: ``nbytes`` is more than the whole budget (it could never run).
            BudgetTimeout: no room came free within ``timeout``.
        """
        if nbytes > self.total:
            raise BudgetExceeded(nbytes)
        with self._lock:
            if not self._lock.wait_for(lambda: self.used + nbytes <= self.total, timeout):
                raise BudgetTimeout(nbytes)
            self.used += nbytes

    def release(self, nbytes: int) -> None:
        """Give back ``nbytes`` taken with :meth:`acquire`."""
        self._give(nbytes)

    @contextmanager
    def hold(self, nbytes: int, timeout: float | None = None) -> Iterator[None]:
        """Hold ``nbytes`` of the budget for the block (:meth:`acquire`, then :meth:`release`). Raises what
        :meth:`acquire` raises."""
        self.acquire(nbytes, timeout)
        try:
            yield
        finally:
            self._give(nbytes)

    @asynccontextmanager
    async def reserve(self, nbytes: int) -> AsyncIterator[None]:
        """Hold ``nbytes`` of the budget for the block (waiting in the event loop).

        Raises:
            BudgetExceeded: ``nbytes`` is more than the whole budget (it could never run).
        """
        import anyio

        if nbytes > self.total:
            raise BudgetExceeded(nbytes)
        if self._cond is None:
            self._cond = anyio.Condition()
        cond = self._cond
        async with cond:
            while not self._take(nbytes):
                with anyio.move_on_after(_ASYNC_RECHECK_S):
                    await cond.wait()
        try:
            yield
        finally:
            self._give(nbytes)
            with anyio.CancelScope(shield=True):
                async with cond:
                    cond.notify_all()
