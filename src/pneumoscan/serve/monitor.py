"""The running server's drift check: a rolling window of its recent in-scope images, tested against the model's
reference (:class:`pneumoscan.gate.drift.DriftCheck`) on request (``GET /api/v1/drift``).

The window keeps, for each of the last ``size`` images the scope gate let through, the model's pooled features and
the intensity descriptors of its input square; nothing that identifies the image or the patient. Out-of-scope
images never enter it: a blank or a lateral film says nothing about how this site's chest films look. It also
counts how many of the last ``size`` analysed images were out of scope: a site whose films the gate refuses
wholesale never fills the window, and that count is how a safety officer sees it.

The threshold comes from the null table the model's reference carries (:mod:`pneumoscan.gate.drift_null`; a model
without one computes it the first time it meets a batch size and mix of cases, then caches it on disk): a report on
the shipped model takes about 10-30 ms (building the check at start-up 10 ms). It still runs in a worker thread, one
at a time, and its answer is kept until the window changes. While the
window fills, the most recent multiple of :data:`STEP` images are tested (50, 100, 150...), so that only a few
batch sizes ever need that calibration; once full, the whole window is.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumoscan.gate.drift import MIN_IMAGES

if TYPE_CHECKING:
    from pneumoscan.result import Result

__all__ = ["STEP", "DriftWindow"]

log = logging.getLogger("pneumoscan.serve")

#: While the window fills, the tested batch grows in steps of this many images.
STEP = MIN_IMAGES

_WHAT = ("the last {n} in-scope images this server analysed, against the model's training films (the model's "
         "features and the films' intensities)")


class DriftWindow:
    """A thread-safe rolling window of ``(features, descriptor)`` of recent in-scope images, and its drift report.

    ``check`` is the model's :class:`~pneumoscan.gate.drift.DriftCheck` (anything with ``test(features (N, C),
    descriptors (N, 7))`` returning a result with ``to_dict()`` and ``shifted``), or None when the model carries
    no reference: then nothing is kept and the report says why.
    """

    def __init__(self, check: Any | None, size: int) -> None:
        if size < MIN_IMAGES:
            raise ValueError(f"the drift window must hold at least {MIN_IMAGES} images, got {size}")
        self.check = check
        self.size = int(size)
        self._items: deque[tuple[np.ndarray, np.ndarray, bool]] = deque(maxlen=self.size)
        self._scope: deque[bool] = deque(maxlen=self.size)  # in scope or not, for the last analysed images
        self._lock = threading.Lock()
        self._version = 0  # counts additions: the cached report is valid while it is unchanged
        self._cached: tuple[int, dict[str, Any]] | None = None
        self._compute = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def record(self, result: Result) -> None:
        """Count one analysed image's :class:`~pneumoscan.result.Result`; remember an in-scope one's features,
        descriptor and decision (not without a drift check or without features)."""
        if not result.read:
            return
        keep = (result.assessed and self.check is not None and result.features is not None
                and result.descriptor is not None)
        item = (np.asarray(result.features, dtype=np.float32).copy(),
                np.asarray(result.descriptor, dtype=np.float32).copy(), result.positive) if keep else None
        with self._lock:
            self._scope.append(bool(result.in_scope))
            if item is not None:
                self._items.append(item)
            self._version += 1

    def _snapshot(self) -> tuple[int, list[tuple[np.ndarray, np.ndarray, bool]], list[bool]]:
        with self._lock:
            return self._version, list(self._items), list(self._scope)

    def report(self) -> dict[str, Any]:
        """The drift verdict on the window, as ``GET /api/v1/drift`` returns it (blocking: call it in a worker
        thread). ``available`` is False, with ``reason``, without a reference or with under 50 images."""
        with self._compute:
            version, items, scope = self._snapshot()
            if self._cached is not None and self._cached[0] == version:
                return self._cached[1]
            out = self._report(items)
            out["recent"] = {"analysed": len(scope), "out_of_scope": scope.count(False)}
            self._cached = (version, out)
            return out

    def _report(self, items: list[tuple[np.ndarray, np.ndarray, bool]]) -> dict[str, Any]:
        n = len(items)
        base: dict[str, Any] = {"available": False, "reason": "", "n_images": n, "window": self.size,
                                "min_images": MIN_IMAGES, "shifted": None, "statistic": None, "threshold": None}
        if self.check is None:
            return {**base, "reason": "this model carries no reference of its training films, so the server "
                                      "cannot check whether this site's images differ from them"}
        if n < MIN_IMAGES:
            return {**base, "reason": f"the drift check needs {MIN_IMAGES} in-scope images; {n} of {MIN_IMAGES} "
                                      "analysed since the server started"}
        tested = n if n == self.size else STEP * (n // STEP)
        recent = items[-tested:]
        try:
            verdict = self.check.test(np.stack([f for f, _, _ in recent]), np.stack([d for _, d, _ in recent]),
                                      flag_rate=float(np.mean([p for _, _, p in recent]))).to_dict()
        except Exception as exc:  # noqa: BLE001 - a failed check is reported, never a 500 for the page
            log.error("drift check failed (%s: %s)", type(exc).__name__, exc)
            return {**base, "reason": f"the drift check failed ({type(exc).__name__}); see the server log"}
        log.info("drift check on the last %d image(s): %s (statistic %.3f, threshold %.3f)", tested,
                 "SHIFTED" if verdict["shifted"] else "no shift", verdict["statistic"], verdict["threshold"])
        return {**base, **verdict, "available": True, "n_images": n, "n_tested": tested,
                "tested": _WHAT.format(n=tested)}
