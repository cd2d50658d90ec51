"""A bounded producer/consumer pipeline: work on a thread pool, results in input order, a fixed number ahead.

:func:`ordered_map` lets a consumer (the model) work on one result while the pool (decoding) prepares the next
ones, without ever holding more than ``window`` of them: the memory it needs does not grow with the number of
items. Used by :meth:`pneumoscan.inference.predictor.Predictor.score_files`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import TypeVar

__all__ = ["batched", "ordered_map"]

T = TypeVar("T")
R = TypeVar("R")


def ordered_map(pool: Executor, fn: Callable[[T], R], items: Iterable[T], *, window: int) -> Iterator[R]:
    """``fn(item)`` for every item, computed on ``pool``, yielded in input order, with at most ``window`` items
    submitted and not yet taken by the consumer.

    An exception raised by ``fn`` is raised here when its item's turn comes. When the consumer stops early (the
    generator is closed), the items not yet started are cancelled.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def batched(results: Iterable[R], size: int) -> Iterator[list[R]]:
    """Consecutive lists of ``size`` results (the last one shorter)."""
    batch: list[R] = []
    for r in results:
        batch.append(r)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
