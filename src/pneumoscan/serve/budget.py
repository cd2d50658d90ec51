"""A server-wide memory budget for decoding, so that many large uploads at once cannot exhaust memory.

Each image's peak decoding memory is estimated from its header before any pixel is decoded
(:func:`estimate_decode_bytes`); :class:`MemoryBudget` admits images while their estimates fit and makes the
rest wait, and refuses outright an image that could never fit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from pneumoscan.io import ImageInfo

__all__ = ["MemoryBudget", "estimate_decode_bytes"]

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


class MemoryBudget:
    """Admit work while the sum of its estimated bytes stays within ``total``; the rest waits (FIFO-ish)."""

    def __init__(self, total: int) -> None:
        if total < 1:
            raise ValueError(f"memory budget must be positive, got {total}")
        self.total = int(total)
        self.used = 0
        self._cond: anyio.Condition | None = None

    @asynccontextmanager
    async def reserve(self, nbytes: int) -> AsyncIterator[None]:
        """Hold ``nbytes`` of the budget for the block.

        Raises:
            BudgetExceeded: ``nbytes`` is more than the whole budget (it could never run).
        """
        if nbytes > self.total:
            raise BudgetExceeded(nbytes)
        if self._cond is None:
            self._cond = anyio.Condition()
        cond = self._cond
        async with cond:
            while self.used + nbytes > self.total:
                await cond.wait()
            self.used += nbytes
        try:
            yield
        finally:
            with anyio.CancelScope(shield=True):
                async with cond:
                    self.used -= nbytes
                    cond.notify_all()
