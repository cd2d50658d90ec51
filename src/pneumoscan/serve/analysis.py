"""One uploaded file in, one result entry out: decode (with its DICOM context), one gated pass (probability, scope
gate, features for the drift window), preview and heatmap, inside the server's limits.

Runs in a worker thread. Every failure is the file's own: :func:`analyse` raises :class:`~pneumoscan.io.ImageError`
for bad input and :class:`Cancelled` when the client has gone; the app turns anything else into that file's
error entry too, so one file never costs the others their results.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pneumoscan.io import read_image_with_context, sniff_format
from pneumoscan.serve.monitor import DriftWindow
from pneumoscan.serve.security import log_id
from pneumoscan.worklist import context_columns

__all__ = ["PREVIEW_SIDE", "Cancelled", "UploadStore", "analyse"]

log = logging.getLogger(__name__)

PREVIEW_SIDE = 512


class Cancelled(Exception):
    """The client disconnected; the work for it stopped."""


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled()


def png_data_uri(rgb_or_gray: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb_or_gray).save(buf, format="PNG", optimize=False, compress_level=6)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def preview(gray: np.ndarray) -> np.ndarray:
    """The film scaled down to at most PREVIEW_SIDE on its long side, keeping the aspect ratio."""
    h, w = gray.shape
    scale = min(1.0, PREVIEW_SIDE / max(h, w))
    if scale >= 1.0:
        return gray
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(gray).resize(size, Image.Resampling.LANCZOS))


def analyse(predictor: Any, name: str, data: bytes, *, heatmap: bool, want_preview: bool, max_pixels: int,
            cancel: threading.Event | None = None, window: DriftWindow | None = None) -> dict[str, Any]:
    """Score one upload through the scope gate (its DICOM header included); return its result entry (``ok: True``).

    ``context`` holds the image's DICOM context (:func:`pneumoscan.worklist.context_columns`: ``patient_id``,
    ``accession``, ``study_date``, ``age``, ``sex``, ``view``, ``study_uid``, ``sop_uid``, plus ``series_uid``;
    all ``""`` for JPEG and PNG), never the patient's name.
    An image out of scope gets ``decision`` ``OUT_OF_SCOPE``, ``positive`` False and ``scope_reason``; it keeps
    its ``probability`` for audit only, and gets no heatmap (a map of "evidence" on a blank page or a lateral film
    would read as a finding). An in-scope image's features go into ``window`` (the server's drift check).

    Raises:
        ImageError: the file cannot be used (message names it; logs name it by :func:`log_id` only).
        Cancelled: ``cancel`` was set between two steps.
    """
    _check(cancel)
    gray, context = read_image_with_context(data, name=name, max_pixels=max_pixels, log_name=log_id(name))
    _check(cancel)
    explain = heatmap and predictor.backend == "torch"
    pred, heat, features, descriptor = predictor.assess(gray, context, heatmap=explain)
    if window is not None:
        window.record(pred.in_scope, features, descriptor, pred.positive)
    out: dict[str, Any] = {
        "filename": name,
        "ok": True,
        "format": sniff_format(data[:132]),
        "width": int(gray.shape[1]),
        "height": int(gray.shape[0]),
        "probability": pred.probability,
        "positive": pred.positive,
        "decision": pred.label,
        "threshold": pred.threshold,
        "in_scope": pred.in_scope,
        "scope_reason": pred.scope_reason,
        "model_version": predictor.version,
        "context": {**context_columns(context), "series_uid": context.series_uid if context else ""},
    }
    _check(cancel)
    if want_preview:
        out["image_png"] = png_data_uri(preview(gray))
    if heat is not None and pred.in_scope:
        from pneumoscan.explain import render_overlay

        out["heatmap_png"] = png_data_uri(render_overlay(gray, heat, max_side=PREVIEW_SIDE,
                                                         caption=f"pneumonia {pred.probability:.1%}"))
    elif heatmap and not explain:
        out["heatmap_error"] = "heatmaps need the .safetensors checkpoint; this server runs an ONNX export"
    return out


class UploadStore:
    """Keeps a copy of each upload under a server-made name, readable by the owner only, for ``retention_days``.

    The client's file name is never used on disk (it may hold a patient's name or a path). Files older than
    the retention are deleted at start-up and then at most once an hour, when a new upload is saved.
    """

    _PURGE_EVERY_S = 3600.0

    def __init__(self, folder: str | os.PathLike[str], retention_days: float | None) -> None:
        self.folder = Path(folder)
        self.retention_days = retention_days
        self._lock = threading.Lock()
        self._last_purge = 0.0
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.purge()

    def save(self, data: bytes, fmt: str) -> Path:
        """Write ``data`` as ``<UTC time>-<random>.<format>`` with mode 0600; never overwrites."""
        path = self.folder / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:12]}.{fmt.lower()}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        if time.monotonic() - self._last_purge > self._PURGE_EVERY_S:
            self.purge()
        return path

    def purge(self) -> int:
        """Delete saved uploads past the retention; return how many were deleted."""
        with self._lock:
            self._last_purge = time.monotonic()
            if self.retention_days is None:
                return 0
            cutoff = time.time() - self.retention_days * 86400.0
            removed = 0
            for p in self.folder.glob("*-*.*"):
                try:
                    if p.is_file() and not p.is_symlink() and p.stat().st_mtime < cutoff:
                        p.unlink()
                        removed += 1
                except OSError as exc:
                    log.warning("could not delete an expired upload %s: %s", p.name, exc)
            if removed:
                log.info("deleted %d saved upload(s) older than %g days", removed, self.retention_days)
            return removed
