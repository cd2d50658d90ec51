"""The report's gallery: the cases on each side of the operating threshold, each film beside its heatmap,
and an enlarged view of both, side by side, that opens without script (an HTML popover: the thumbnail is a button,
Esc, the Close button or a click outside shuts it).

Images are JPEG data URIs (thumbnails of :data:`THUMB_SIDE` pixels, enlarged views of at most :data:`LARGE_SIDE`),
and at most :data:`GALLERY_SIZES` cases of each kind are shown, so that the report stays a few megabytes; the
report says how many were left out (every case is in ``scores.csv``).

The heatmaps are the product's explanation (occlusion sensitivity, the map the viewer, the printed report and the
Secondary Capture show), made with the checkpoint's torch network, on the CPU, only for the cases shown.
Where the network cannot be rebuilt, the gallery shows the films alone and says why.
"""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pneumoscan.constants import CLASS_NAMES
from pneumoscan.errors import PneumoscanError
from pneumoscan.io import ImageError, read_image
from pneumoscan.metrics import decide, score_100
from pneumoscan.result import Result, upsample_map

__all__ = ["CAUSE_KINDS", "GALLERY_SIZES", "GALLERY_TITLES", "JPEG_QUALITY", "LARGE_SIDE", "THUMB_SIDE", "build_gallery",
           "explanation_maps", "jpeg_uri", "pick_cases"]

log = logging.getLogger(__name__)

#: How many cases each gallery shows: errors 16 each, the most confident correct cases 8 each.
GALLERY_SIZES = {"fn": 16, "fp": 16, "tp": 8, "tn": 8, "viral_as_bacterial": 12, "bacterial_as_viral": 12}
GALLERY_TITLES = {
    "fn": "False negatives: pneumonia the model missed (lowest scores first)",
    "fp": "False positives: normal images flagged (highest scores first)",
    "tp": "Most confident true positives, for contrast",
    "tn": "Most confident true negatives, for contrast",
    "viral_as_bacterial": "Cause: viral pneumonia flagged as a bacterial pattern (lowest viral scores first)",
    "bacterial_as_viral": "Cause: bacterial pneumonia flagged as a viral pattern (highest viral scores first)",
}
#: The cause galleries (flagged films of a known cause whose pattern the model gave as the other one).
CAUSE_KINDS = ("viral_as_bacterial", "bacterial_as_viral")
#: Side of a gallery thumbnail and longest side of an enlarged film or heatmap, in pixels.
THUMB_SIDE = 128
LARGE_SIDE = 448
JPEG_QUALITY = 80


def jpeg_uri(image: np.ndarray, max_side: int, quality: int = JPEG_QUALITY) -> str:
    """A ``data:image/jpeg`` URI of a grayscale ``(H, W)`` or RGB ``(H, W, 3)`` uint8 image, shrunk (aspect kept)
    so that its longest side is at most ``max_side``."""
    im = Image.fromarray(np.ascontiguousarray(_fit(np.asarray(image, dtype=np.uint8), max_side)))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality, optimize=True)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def pick_cases(p: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, tuple[np.ndarray, int]]:
    """kind -> (indices shown, how many cases of that kind there are), for ``fn``, ``fp``, ``tp``, ``tn``.

    Most confident first: the errors and the correct cases furthest from the threshold."""
    pred = np.asarray(decide(np.asarray(p, dtype=np.float64), threshold), dtype=bool)
    picks = {"fn": np.flatnonzero((y == 1) & ~pred), "fp": np.flatnonzero((y == 0) & pred),
             "tp": np.flatnonzero((y == 1) & pred), "tn": np.flatnonzero((y == 0) & ~pred)}
    out = {}
    for kind, idx in picks.items():
        order = idx[np.argsort(p[idx] if kind in ("fn", "tn") else -p[idx], kind="stable")]
        out[kind] = (order[: GALLERY_SIZES[kind]], int(idx.size))
    return out


def pick_cause_cases(results: Sequence[Result], records: Sequence[Any]) -> dict[str, tuple[np.ndarray, int]]:
    """kind -> (indices shown, how many there are) for :data:`CAUSE_KINDS`: flagged films of a known cause whose
    result gives the other cause, most confident first. Empty for a model without a cause output."""
    truth = np.array([{"virus": 2, "bacteria": 1}.get(r.cause or "", 0) if int(r.label) == 1 else 0
                      for r in records])
    said = np.array([{"VIRAL": 2, "BACTERIAL": 1}.get(r.cause, 0) for r in results])
    viral = np.array([r.cause_probability if r.cause_probability is not None else 0.5 for r in results])
    if not said.any():
        return {}
    out = {}
    for kind, t, s_, desc in (("viral_as_bacterial", 2, 1, False), ("bacterial_as_viral", 1, 2, True)):
        idx = np.flatnonzero((truth == t) & (said == s_))
        order = idx[np.argsort(-viral[idx] if desc else viral[idx], kind="stable")]
        out[kind] = (order[: GALLERY_SIZES[kind]], int(idx.size))
    return out


def explanation_maps(checkpoint: Any, squares: np.ndarray) -> tuple[list[np.ndarray] | None, str]:
    """The product's explanation (occlusion sensitivity, :mod:`pneumoscan.inference.occlusion`) of each ``(S, S)
    uint8`` square of ``squares`` (``(N, S, S)``, rows of the decoded-image cache): each map on its own grid
    (unnormalised; :func:`~pneumoscan.result.upsample_map` lays it over any size), the same maps the viewer, the printed report and the Secondary Capture show, from the checkpoint's
    torch network on the CPU.

    Returns ``(maps, "")``, or ``(None, why)`` when the network cannot be rebuilt or run."""
    if len(squares) == 0:
        return [], ""
    try:
        from pneumoscan.inference.network import Network
        from pneumoscan.inference.scoring import RuntimeOptions
        from pneumoscan.inference.torch_scoring import TorchRunner, model_from_checkpoint

        runner = TorchRunner(model_from_checkpoint(checkpoint), RuntimeOptions(backend="torch"))
        net = Network(runner, checkpoint.info.preprocessing)
        _, _, low, _ = net.occlusion(list(np.asarray(squares)))
        return [np.asarray(m, np.float32) for m in low], ""
    except (PneumoscanError, ImportError, AttributeError, KeyError, RuntimeError, ValueError) as exc:
        log.warning("gallery: no heatmaps: %s", exc)
        return None, f"Heatmaps could not be made from this checkpoint ({exc})."


def _fit(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` shrunk (aspect kept, Lanczos) so that its longest side is at most ``side``."""
    h, w = image.shape[:2]
    if max(h, w) <= side:
        return np.asarray(image)
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(np.asarray(image)).resize(size, Image.Resampling.LANCZOS))


def _large_film(path: str, square: np.ndarray) -> np.ndarray:
    """The film as decoded from its file, for the enlarged view; the model's square when the file cannot be read
    again (moved, or changed since it was cached)."""
    try:
        return read_image(path)
    except (ImageError, OSError) as exc:
        log.info("gallery: %s: enlarged from the cached square (%s)", Path(path).name, exc)
        return np.asarray(square)


def _item(uid: str, rec: Any, result: Result, square: np.ndarray, heat: np.ndarray | None) -> dict[str, Any]:
    """One gallery entry: images as JPEG URIs, the score and threshold on 0-100, the result's decision words (as
    ``predict`` would say them: an image out of scope is "not assessed"), the truth."""
    film = _fit(_large_film(rec.path, square), LARGE_SIDE)
    item = {
        "id": uid, "name": Path(rec.path).name, "patient": rec.patient_id, "cause": rec.cause or "",
        "model_cause": result.cause_text, "cause_score": result.cause_score,
        "probability": float(result.probability), "score": score_100(result.probability),
        "threshold": result.score_threshold, "decision": result.decision_text,
        "truth": CLASS_NAMES[int(rec.label)].capitalize(),
        "thumb": jpeg_uri(square, THUMB_SIDE), "large": jpeg_uri(film, LARGE_SIDE), "heat": None, "large_heat": None,
        "heat_empty": heat is not None and not float(np.max(heat)) > 0,  # "no positive evidence"
    }
    if heat is not None:
        from pneumoscan.inference.render import render_overlay

        small = upsample_map(heat, np.asarray(square).shape)
        item["heat"] = jpeg_uri(render_overlay(np.asarray(square), small, legend=False), THUMB_SIDE)
        # The square map stretched back to the film's shape lies on the film's geometry (Explanation.heatmap).
        big = upsample_map(heat, film.shape)
        item["large_heat"] = jpeg_uri(render_overlay(film, big, max_side=LARGE_SIDE), LARGE_SIDE)
    return item


def build_gallery(sm: Any, records: Sequence[Any], results: Sequence[Result], y: np.ndarray, threshold: float,
                  sid: str) -> dict[str, Any]:
    """The gallery of one model at its operating ``threshold``.

    Args:
        sm: the model's :class:`~pneumoscan.inference.torch_scoring.ScoredModel` (``probs``, ``images``, ``rows``,
            ``checkpoint``).
        records: the evaluated images, aligned with ``sm``; results: their :class:`~pneumoscan.result.Result`
            (each item shows its decision). y: their labels. sid: the model's section id.

    Returns:
        ``{"kinds": {kind: {"items", "n_total", "n_left_out"}}, "heatmaps": bool, "heatmap_note": str}``; each
        item has an ``id`` unique in the report (``<sid>-<kind>-<k>``).
    """
    p = np.asarray(sm.probs, dtype=np.float64)
    picks = {**pick_cases(p, y, threshold), **pick_cause_cases(results, records)}
    shown = np.concatenate([idx for idx, _ in picks.values()]).astype(np.int64)
    squares = np.asarray(sm.images[np.asarray(sm.rows)[shown]]) if shown.size else np.empty((0, 1, 1), np.uint8)
    maps, note = explanation_maps(sm.checkpoint, squares)
    heat_of = dict(zip(shown.tolist(), maps)) if maps is not None else {}
    kinds = {}
    for kind, (idx, total) in picks.items():
        items = [_item(f"{sid}-{kind}-{k}", records[i], results[i], sm.images[sm.rows[i]], heat_of.get(int(i)))
                 for k, i in enumerate(idx)]
        kinds[kind] = {"items": items, "n_total": total, "n_left_out": total - len(items)}
    return {"kinds": kinds, "heatmaps": maps is not None, "heatmap_note": note}
