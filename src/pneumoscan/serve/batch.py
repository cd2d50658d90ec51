"""The files of one request, analysed with bounded parallelism inside the memory budget; the work stops when the
client disconnects. Every failure while analysing one file, of any kind, is that file's error entry. Every
analysed file, result or error, is recorded in the worklist database (:mod:`.record`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
from fastapi import Request

from pneumoscan.io import (
    ImageError,
    ImageMemoryError,
    ImageTooLargeError,
    NotAnImageError,
    UnsupportedDicomError,
    read_image_info,
    sniff_format,
)
from pneumoscan.result import Result
from pneumoscan.serve.analysis import Cancelled, analyse, error_entry
from pneumoscan.serve.budget import BudgetExceeded, estimate_decode_bytes
from pneumoscan.serve.record import record
from pneumoscan.serve.security import log_id, reader_of
from pneumoscan.serve.state import ServerState

__all__ = ["OverBudget", "analyse_all", "analyse_one", "failed", "refused", "run_budgeted"]

log = logging.getLogger("pneumoscan.serve")

T = TypeVar("T")

_STATUS_FOR = {ImageTooLargeError: 413, ImageMemoryError: 413, NotAnImageError: 415, UnsupportedDicomError: 415}
_MIB = 1024 * 1024


async def analyse_one(state: ServerState, name: str, data: bytes, heatmap: bool, want_preview: bool,
                      cancel: threading.Event, client: str | None = None) -> tuple[dict[str, Any], int]:
    """``(entry, status)`` for one file; every failure becomes the entry's error, never the request's. The entry
    is recorded in the worklist database (``worklist_id``) as sent by ``client``, unless the client went away
    first."""
    result, entry, status = await _analyse_one(state, name, data, heatmap, want_preview, cancel)
    if status != 499:
        await anyio.to_thread.run_sync(record, state, name, data, result, entry, client)
    return entry, status


class OverBudget(Exception):
    """One file's decoding would not fit the server's memory budget (413); the message says so and what to do."""


async def run_budgeted(state: ServerState, name: str, data: bytes, *, heatmap: bool, work: Callable[[], T]) -> T:
    """Run ``work`` (one file's decoding and scoring) in a worker thread under the server's limiter, after its
    header has been read and the memory its decoding needs reserved from the budget.

    Raises:
        ImageError: the header cannot be read or the image is over the pixel limit.
        OverBudget: the estimate does not fit the memory budget.
    """
    settings = state.settings
    info = await anyio.to_thread.run_sync(lambda: read_image_info(data, name=name, max_pixels=settings.max_pixels))
    need = estimate_decode_bytes(info, heatmap=heatmap)
    try:
        async with state.budget.reserve(need):
            return await anyio.to_thread.run_sync(work, limiter=state.limiter)
    except BudgetExceeded:
        raise OverBudget(f"{name}: image is {info.width} x {info.height} pixels and would need about "
                         f"{need / _MIB:,.0f} MiB to analyse; this server's memory budget is "
                         f"{settings.memory_budget_bytes / _MIB:,.0f} MiB. Downscale it and send it again") from None


def refused(state: ServerState, name: str, exc: ImageError | OverBudget) -> tuple[Result, int]:
    """``(result, status)`` for a file refused as bad input (415, 413 or 422) or over the memory budget (413)."""
    status = 413 if isinstance(exc, OverBudget) else _STATUS_FOR.get(type(exc), 422)
    return Result.unread(name, str(exc), state.predictor.identity), status


def failed(state: ServerState, name: str, message: str) -> Result:
    """The result of a file whose analysis failed for another reason (cancelled, an internal error)."""
    return Result.unread(name, message, state.predictor.identity)


async def _analyse_one(state: ServerState, name: str, data: bytes, heatmap: bool, want_preview: bool,
                       cancel: threading.Event) -> tuple[Result, dict[str, Any], int]:
    settings, predictor = state.settings, state.predictor
    try:
        fmt = sniff_format(data[:132])
        if state.uploads is not None and fmt is not None:
            await anyio.to_thread.run_sync(state.uploads.save, data, fmt)
        done = await run_budgeted(state, name, data, heatmap=heatmap, work=lambda: analyse(
            predictor, name, data, heatmap=heatmap, want_preview=want_preview, max_pixels=settings.max_pixels,
            cancel=cancel, window=state.drift))
        r = done.result
        log.info("%s: %s, p=%.3f%s", log_id(name), r.decision, r.probability,
                 "" if r.assessed else f" (not assessed: {r.scope_reason})")
        return r, done.entry(), 200
    except (ImageError, OverBudget) as exc:
        log.info("%s: refused (%s)", log_id(name), type(exc).__name__)
        result, status = refused(state, name, exc)
    except Cancelled:
        result, status = failed(state, name, f"{name}: cancelled, the client disconnected"), 499
    except Exception as exc:  # one file's failure must never cost the others their results
        log.error("%s: internal error while analysing (%s)", log_id(name), type(exc).__name__,
                  exc_info=log.isEnabledFor(logging.DEBUG))
        result, status = failed(state, name, f"{name}: internal error while analysing this file "
                                             f"({type(exc).__name__}); the other files are not affected"), 500
    return result, error_entry(result), status


async def _watch_disconnect(request: Request, cancel: threading.Event, scope: anyio.CancelScope) -> None:
    while not await request.is_disconnected():
        await anyio.sleep(0.2)
    cancel.set()
    scope.cancel()


async def analyse_all(request: Request, state: ServerState, files: list[tuple[str, bytes]], heatmap: bool,
                      want_preview: bool) -> tuple[list[dict[str, Any]], list[int], bool]:
    """Analyse the files with bounded parallelism; stop when the client disconnects.

    Returns ``(entries in upload order, statuses, client_gone)``.
    """
    entries: list[Any] = [None] * len(files)
    statuses = [0] * len(files)
    cancel = threading.Event()
    part = anyio.CapacityLimiter(state.settings.request_parallelism)

    async def one(i: int) -> None:
        async with part:
            if cancel.is_set():
                return
            entries[i], statuses[i] = await analyse_one(state, *files[i], heatmap, want_preview, cancel,
                                                        reader_of(request, state.auth.client_id))

    async with anyio.create_task_group() as outer:
        outer.start_soon(_watch_disconnect, request, cancel, outer.cancel_scope)
        async with anyio.create_task_group() as work:
            for i in range(len(files)):
                work.start_soon(one, i)
        outer.cancel_scope.cancel()
    return entries, statuses, cancel.is_set()
