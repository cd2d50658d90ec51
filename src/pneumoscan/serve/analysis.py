"""One uploaded file in, one :class:`~pneumoscan.result.Result` and its pictures out: read the one way
(:func:`pneumoscan.preprocessing.read_film`, with its DICOM context), one gated pass (the result, with the features
for the drift window), preview and heatmap, inside the server's limits.

Each upload is decoded once: the pictures (at most PREVIEW_SIDE) come from the decode the model's square is made
from, which for a large JPEG is a DCT-domain reduced one, never from a second, full-size decode. Only a viewer's
re-render that asks for the film at full resolution *and* a heatmap of a large JPEG decodes it twice (the film in
full, the square as every other path makes it), and the page never asks that: its browser decodes JPEGs itself.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from pneumoscan.io import sniff_format
from pneumoscan.io.images import decode_image
from pneumoscan.preprocessing import read_film
from pneumoscan.serve.monitor import DriftWindow
from pneumoscan.serve.security import log_id

if TYPE_CHECKING:
    from pneumoscan.inference.protocols import ResultMaker
    from pneumoscan.preprocessing import Film
    from pneumoscan.result import Result

__all__ = ["FILM_MAX_SIDE", "PREVIEW_SIDE", "THUMBNAIL_SIDE", "Analysis", "Cancelled", "UploadStore", "analyse",
           "error_entry", "render_film"]

log = logging.getLogger(__name__)

#: Longest side of the preview (``image_png``), of the heatmap overlay (``heatmap_png``) and of the map alone
#: (``heatmap_map``) in a result entry.
PREVIEW_SIDE = 512
#: Longest side of the ``thumbnail`` every result entry carries (the worklist's small picture).
THUMBNAIL_SIDE = 128
#: Longest side of the film :func:`render_film` returns (``POST /api/v1/explain``); larger films are scaled down.
FILM_MAX_SIDE = 4096
#: Pictures are encoded for speed (measured on the 40 full-resolution samples, medians: a 512 px preview takes
#: 23 ms as PNG at level 6, 5.7 ms at level 1, 0.5 ms as JPEG 90; the full film 196, 43 and 3 ms). PNG stays for
#: the preview, the overlay and the film (lossless: a viewer's window/level would magnify JPEG's artefacts), at
#: level 1; the thumbnail and the smooth map alone are JPEG.
PNG_LEVEL = 1
JPEG_QUALITY = 90


class Cancelled(Exception):
    """The client disconnected; the work for it stopped."""


def _check(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise Cancelled()


def png_data_uri(rgb_or_gray: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb_or_gray).save(buf, format="PNG", optimize=False, compress_level=PNG_LEVEL)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def jpeg_data_uri(rgb_or_gray: np.ndarray, quality: int = JPEG_QUALITY) -> str:
    buf = io.BytesIO()
    Image.fromarray(rgb_or_gray).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def downscale(gray: np.ndarray, side: int) -> np.ndarray:
    """``gray`` scaled down to at most ``side`` on its long side, keeping the aspect ratio (itself if it fits).

    A box reduction by a whole factor first, then Lanczos to the exact size: 3 ms instead of 9 ms (medians on the
    full-resolution samples, 512 px) for the same look.
    """
    h, w = gray.shape[:2]
    scale = min(1.0, side / max(h, w))
    if scale >= 1.0:
        return gray
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    im = Image.fromarray(gray)
    factor = int(max(h, w) // side)
    if factor >= 2:
        im = im.reduce(factor)
    return np.asarray(im.resize(size, Image.Resampling.LANCZOS))


def preview(gray: np.ndarray) -> np.ndarray:
    """The film scaled down to at most PREVIEW_SIDE on its long side, keeping the aspect ratio."""
    return downscale(gray, PREVIEW_SIDE)


def _pictures(gray: np.ndarray, result: Result, want_preview: bool) -> dict[str, str]:
    """The entry's pictures, all from one downscaled preview of ``gray`` (the film as decoded for the model; a large
    JPEG's reduced-scale decode, at least twice the model's square on each side, so its preview may be a little
    under PREVIEW_SIDE): ``thumbnail`` always; ``image_png`` with
    ``want_preview``; ``heatmap_png`` (overlay, captioned with the result's one wording) and ``heatmap_map`` (the
    map alone) when the result carries an explanation (only an assessed film does)."""
    from pneumoscan.inference.render import render_heat, render_overlay

    small = preview(gray)
    out = {"thumbnail": jpeg_data_uri(downscale(small, THUMBNAIL_SIDE), quality=85)}
    if want_preview:
        out["image_png"] = png_data_uri(small)
    heat = result.heatmap(small.shape)
    if heat is not None:
        out["heatmap_png"] = png_data_uri(render_overlay(small, heat, max_side=PREVIEW_SIDE,
                                                         caption=result.caption()))
        out["heatmap_map"] = jpeg_data_uri(render_heat(heat, max_side=PREVIEW_SIDE))
    return out


@dataclass(frozen=True)
class Analysis:
    """One upload's :class:`~pneumoscan.result.Result` and what the page shows of it: the file's ``format`` and
    size, and its pictures (data URIs: ``thumbnail``, ``image_png``, ``heatmap_png``, ``heatmap_map``) and
    ``heatmap_error`` (why a heatmap asked for was not made)."""

    result: Result
    format: str
    width: int
    height: int
    pictures: dict[str, str] = field(default_factory=dict)

    def entry(self) -> dict[str, Any]:
        """The API's result entry: ``filename``, the result (:meth:`~pneumoscan.result.Result.to_dict`), the file's
        ``format``, ``width`` and ``height``, and the pictures."""
        return {"filename": self.result.source, **self.result.to_dict(), "format": self.format,
                "width": self.width, "height": self.height, **self.pictures}


def error_entry(result: Result) -> dict[str, Any]:
    """The API's entry for a file that could not be analysed (``ok`` false; ``error`` names the file and why)."""
    return {"filename": result.source, **result.to_dict()}


def analyse(predictor: ResultMaker, name: str, data: bytes, *, heatmap: bool, want_preview: bool, max_pixels: int,
            cancel: threading.Event | None = None, window: DriftWindow | None = None) -> Analysis:
    """Score one upload through the scope gate (its DICOM header included): its :class:`Analysis`.

    The result's context holds the image's DICOM context (:data:`pneumoscan.result.CONTEXT_KEYS`; all ``""`` for
    JPEG and PNG), never the patient's name. An image out of scope gets ``decision`` ``OUT_OF_SCOPE`` and its
    reason; it keeps its ``probability`` for audit only, and gets no heatmap (a map of "evidence" on a blank page or
    a lateral film would read as a finding). The result goes into ``window`` (the server's drift check keeps an
    in-scope film's features). Every entry carries a ``thumbnail`` (JPEG data URI, THUMBNAIL_SIDE px); with
    ``want_preview`` an ``image_png``; with a heatmap a ``heatmap_png`` (overlay) and a ``heatmap_map`` (the map
    alone: :func:`pneumoscan.inference.render.render_heat`, as a JPEG data URI).

    Raises:
        ImageError: the file cannot be used (message names it; logs name it by :func:`log_id` only).
        Cancelled: ``cancel`` was set between two steps.
    """
    _check(cancel)
    film = read_film(data, predictor.preprocessing, decoded=True, name=name, max_pixels=max_pixels,
                     log_name=log_id(name))  # one decode: the square and the pictures
    assert film.gray is not None and film.size is not None
    _check(cancel)
    result = predictor.assess(film, source=name, explain=heatmap)
    if window is not None:
        window.record(result)
    _check(cancel)
    pictures = _pictures(film.gray, result, want_preview)
    height, width = film.size
    return Analysis(result.without_film(), sniff_format(data[:132]) or "", int(width), int(height), pictures)


def render_film(predictor: ResultMaker, name: str, data: bytes, *, heatmap: bool, film: bool, max_pixels: int
                ) -> dict[str, Any]:
    """Re-render one upload for a viewer (``POST /api/v1/explain``): nothing is recorded, nothing enters the drift
    window.

    With ``film``: ``film_png``, the decoded film (DICOM windowed and inverted as for scoring) as an 8-bit PNG
    data URI at full resolution, scaled down to FILM_MAX_SIDE on its long side when larger (``film_scaled``).
    With ``heatmap``: the result (:meth:`~pneumoscan.result.Result.to_dict`) and ``heatmap_map`` (the map
    alone, at the film's aspect), or ``heatmap_error`` (out of scope).

    The file is decoded once, except a large JPEG asked for with both ``film`` and ``heatmap``: the film at full
    resolution, and the model's square from the reduced-scale decode every other path scores.

    Raises:
        ImageError: the file cannot be used.
    """
    limits: dict[str, Any] = {"name": name, "max_pixels": max_pixels, "log_name": log_id(name)}
    decoded: Film | None = None
    if heatmap:  # the square the film was scored from, and the film in full too when it is shown
        decoded = read_film(data, predictor.preprocessing, full=film, decoded=not film, **limits)
        gray, size = decoded.gray, decoded.size
    elif film:  # the film alone: no model input to make
        whole = decode_image(data, **limits)
        gray, size = whole.gray, whole.size
    else:  # only its size: the cheapest decode
        decoded = read_film(data, predictor.preprocessing, **limits)
        gray, size = None, decoded.size
    assert size is not None
    out: dict[str, Any] = {"filename": name, "ok": True, "format": sniff_format(data[:132]),
                           "width": int(size[1]), "height": int(size[0])}
    if film:
        assert gray is not None
        shown = downscale(gray, FILM_MAX_SIDE)
        out.update(film_png=png_data_uri(shown), film_width=int(shown.shape[1]), film_height=int(shown.shape[0]),
                   film_scaled=shown.shape != gray.shape, film_max_side=FILM_MAX_SIDE)
    if heatmap:
        assert decoded is not None
        out.update(_heat_only(predictor, decoded, name))
    return out


def _heat_only(predictor: ResultMaker, decoded: Film, name: str) -> dict[str, Any]:
    from pneumoscan.inference.render import render_heat

    result = predictor.assess(decoded, source=name, explain=True)
    out = result.to_dict()
    assert decoded.size is not None
    heat = result.heatmap(decoded.size)
    if heat is None:
        out["heatmap_error"] = f"no heatmap for an image out of scope ({result.scope_reason})"
    else:
        out["heatmap_map"] = jpeg_data_uri(render_heat(heat, max_side=PREVIEW_SIDE))
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
