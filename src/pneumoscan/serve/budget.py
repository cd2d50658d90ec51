"""A server-wide memory budget for decoding, so that many large uploads at once cannot exhaust memory.

Each image's peak decoding memory is estimated from its header before any pixel is decoded
(:func:`estimate_decode_bytes`); :class:`MemoryBudget` admits images while their estimates fit and makes the
rest wait, and refuses outright an image that could never fit. Both live in :mod:`pneumoscan.io.budget`, shared with
the DICOM node; the server uses the async side (:meth:`MemoryBudget.reserve`).
"""

from __future__ import annotations

from pneumoscan.io.budget import BudgetExceeded, MemoryBudget, estimate_decode_bytes

__all__ = ["BudgetExceeded", "MemoryBudget", "estimate_decode_bytes"]
