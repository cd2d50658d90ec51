"""Heatmaps and overlays a clinician can read, drawn without torch: the map over the film (:func:`render_overlay`),
the map alone for a viewer (:func:`render_heat`), overlay PNGs on disk (:func:`write_heatmap`) and their file names
(:func:`unique_stems`).

The map is occlusion sensitivity (:mod:`pneumoscan.inference.occlusion`): where hiding the film lowered the
pneumonia score. It shows what the score rests on, not where the disease is: a check on the model (does it rest on
the lungs, or on a marker in the corner?), shown beside the score; it is not a segmentation. It is drawn only where
the evidence is (at least :data:`EVIDENCE_FLOOR` of its maximum), yellow to red, with an optional cyan outline of the
strongest region.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont, PngImagePlugin

from pneumoscan.utils import NAME_MAX, atomic_write_bytes, fit_name

__all__ = ["EVIDENCE_FLOOR", "MAX_OVERLAY_SIDE", "OUTLINE_LEVEL", "STEM_MAX_BYTES", "heat_table", "outline_mask",
           "render_heat", "render_overlay", "save_overlay", "unique_stems", "write_heatmap"]

#: Longest side of an overlay PNG; larger films are scaled down (aspect ratio kept).
MAX_OVERLAY_SIDE = 1024
#: Longest heatmap stem in bytes: ``<stem>_heatmap.png`` (or ``.npy``) must fit one file name.
STEM_MAX_BYTES = NAME_MAX - len("_heatmap.png")
#: Map values below this fraction of the map's maximum are not drawn (no tint where there is little evidence).
EVIDENCE_FLOOR = 0.25
#: The strongest region, outlined on request: the map at this fraction of its maximum or more.
OUTLINE_LEVEL = 0.6
#: The outline's colour (cyan: apart from the yellow-to-red map and the gray film).
OUTLINE_RGB = (0, 255, 255)



def _fit(height: int, width: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=px)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def heat_table(alpha: float = 1.0) -> np.ndarray:
    """The colour and opacity of each map value ``v`` = 0..255 (255: the map's maximum), float32 ``(256, 4)``: RGB
    0..255 and opacity 0..1. Below :data:`EVIDENCE_FLOOR` nothing is drawn, so the film stays untouched where the
    model found little evidence; from the floor up the colour goes from yellow to red and the opacity from
    ``0.3 * alpha`` to ``alpha``. The page's viewer draws the same table (``heatTable`` in
    ``serve/static/viewer-film.js``)."""
    v = np.arange(256, dtype=np.float32) / 255.0
    t = np.clip((v - EVIDENCE_FLOOR) / (1.0 - EVIDENCE_FLOOR), 0.0, 1.0)
    on = v >= EVIDENCE_FLOOR
    out = np.zeros((256, 4), np.float32)
    out[:, 0] = 255.0
    out[:, 1] = np.rint(255.0 * (1.0 - t))
    out[:, 3] = np.where(on, alpha * (0.3 + 0.7 * t), 0.0)
    return out


def outline_mask(heat: np.ndarray, level: float = OUTLINE_LEVEL, width: int = 1) -> np.ndarray:
    """The border (``width`` px) of the strongest region: pixels where ``heat`` (in [0, 1]) reaches ``level``
    with a neighbour (within ``width``) below it. Boolean, ``heat``'s shape."""
    inside = np.asarray(heat) >= level
    if not inside.any():
        return inside
    im = Image.fromarray(inside.astype(np.uint8) * 255)
    eroded = np.asarray(im.filter(ImageFilter.MinFilter(2 * width + 1))) > 0
    return inside & ~eroded


def render_overlay(image: np.ndarray, heatmap: np.ndarray, *, caption: str | None = None, alpha: float = 0.55,
                   max_side: int = MAX_OVERLAY_SIDE, legend: bool = True, outline: bool = False) -> np.ndarray:
    """The heatmap over a grayscale X-ray, coloured only where the evidence is (:func:`heat_table`).

    Args:
        image: the decoded film, ``(H, W) uint8``.
        heatmap: ``(H, W)`` (or any size: it is stretched to the film) float in [0, 1].
        caption: drawn at the top left, wrapped to the image's width (a result's
            :meth:`~pneumoscan.result.Result.caption`).
        alpha: opacity where the heatmap is 1 (below :data:`EVIDENCE_FLOOR` the film is left as it is).
        max_side: the result is scaled down to this longest side, keeping the aspect ratio.
        legend: draw a small colour bar ("low" .. "high") at the bottom right.
        outline: also draw the border of the strongest region (the map at :data:`OUTLINE_LEVEL` of its maximum or
            more) in cyan.

    Returns:
        ``(h, w, 3) uint8`` RGB at the film's aspect ratio (its own size when ``max(H, W) <= max_side``).
    """
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"image must be a 2-D uint8 array, got {image.dtype} {image.shape}")
    h, w = _fit(*image.shape, max_side)
    film = image if (h, w) == image.shape else np.asarray(
        Image.fromarray(image).resize((w, h), Image.Resampling.LANCZOS))
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != (h, w):
        heat = np.asarray(Image.fromarray(heat).resize((w, h), Image.Resampling.BILINEAR))
    heat = np.clip(np.nan_to_num(heat), 0.0, 1.0)
    table = heat_table(alpha)
    px = table[np.rint(heat * 255).astype(np.uint8)]
    a = px[..., 3:4]
    rgb = film[..., None].astype(np.float32) * (1 - a) + px[..., :3] * a
    if outline:
        rgb[outline_mask(heat, width=max(1, round(max(h, w) / 400)))] = OUTLINE_RGB
    rgb = np.rint(rgb).clip(0, 255).astype(np.uint8)
    if caption or legend:
        rgb = _annotate(rgb, caption, table[int(np.ceil(EVIDENCE_FLOOR * 255)):, :3] if legend else None)
    return rgb


def render_heat(heatmap: np.ndarray, *, max_side: int = 512) -> np.ndarray:
    """The map alone, as an 8-bit grayscale image a viewer can colour and blend with any opacity.

    Args:
        heatmap: ``(H, W)`` float in [0, 1] at the film's size (what :meth:`~pneumoscan.inference.predictor.Predictor.assess`
            returns).
        max_side: the result is scaled down to this longest side, keeping the film's aspect ratio (the map is
            smooth: a viewer stretches it back to the film without visible loss).

    Returns:
        ``(h, w) uint8``: 0 where the model found no evidence for pneumonia, 255 at the map's maximum. To draw it
        as :func:`render_overlay` does, look each value up in :func:`heat_table`.
    """
    heat = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float32)), 0.0, 1.0)
    if heat.ndim != 2:
        raise ValueError(f"a heatmap must be (H, W), got {heat.shape}")
    h, w = _fit(*heat.shape, max_side)
    if (h, w) != heat.shape:
        im = Image.fromarray(heat)
        factor = max(heat.shape) // max_side
        if factor >= 2:  # a box reduction first: 3.6 ms instead of 12 for a 2000 px map, the same smooth result
            im = im.reduce(factor)
        heat = np.asarray(im.resize((w, h), Image.Resampling.BILINEAR))
    return np.rint(np.clip(heat, 0.0, 1.0) * 255).astype(np.uint8)


def _annotate(rgb: np.ndarray, caption: str | None, lut: np.ndarray | None) -> np.ndarray:
    """Draw the caption (top left, on a dark box) and a colour bar (bottom right) inside the image."""
    im = Image.fromarray(rgb)
    draw = ImageDraw.Draw(im, "RGBA")
    h, w = rgb.shape[:2]
    px = max(9, round(min(h, w) / 40))
    font = _font(px)
    pad = max(2, px // 3)
    if caption:  # wrapped to the image's width by measured text width, on a dark box at the top left
        lines: list[str] = []
        for word in caption.split():
            if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= w - 2 * pad:
                lines[-1] += f" {word}"
            else:
                lines.append(word)
        text = "\n".join(lines)
        box = draw.multiline_textbbox((pad, pad), text, font=font)
        draw.rectangle((0, 0, min(w, box[2] + pad), box[3] + pad), fill=(0, 0, 0, 170))
        draw.multiline_text((pad, pad), text, fill=(255, 255, 255, 255), font=font)
    if lut is not None and w >= 120 and h >= 80:
        bar_w, bar_h = max(40, w // 6), max(4, px // 2)
        x0, y0 = w - bar_w - 3 * pad, h - bar_h - 2 * pad - px
        colours = lut[np.linspace(0, len(lut) - 1, bar_w).astype(int)].astype(np.uint8)
        bar = Image.fromarray(np.repeat(colours[None], bar_h, axis=0))
        draw.rectangle((x0 - pad, y0 - pad, x0 + bar_w + pad, h - pad // 2), fill=(0, 0, 0, 170))
        im.paste(bar, (x0, y0))
        draw.text((x0, y0 + bar_h + 1), "low", fill=(255, 255, 255, 255), font=font)
        hi = draw.textbbox((0, 0), "high", font=font)[2]
        draw.text((x0 + bar_w - hi, y0 + bar_h + 1), "high", fill=(255, 255, 255, 255), font=font)
    return np.asarray(im)


def save_overlay(path: str | os.PathLike[str], image: np.ndarray, heatmap: np.ndarray, *,
                 caption: str | None = None, original_size: tuple[int, ...] | None = None,
                 **kwargs: object) -> Path:
    """Render :func:`render_overlay` and write it atomically as a PNG (the caption is also stored as text, and the
    film's ``original_size`` ``(H, W)``, default ``image``'s own, as ``OriginalSize`` ``WxH``)."""
    rgb = render_overlay(image, heatmap, caption=caption, **kwargs)  # type: ignore[arg-type]
    h, w = (original_size or image.shape)[:2]
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", "pneumoscan heatmap, occlusion sensitivity (decision support, not a diagnosis)")
    info.add_text("OriginalSize", f"{w}x{h}")
    if caption:
        info.add_text("Description", caption)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG", pnginfo=info)
    out = Path(path)
    atomic_write_bytes(out, buf.getvalue())
    return out


def write_heatmap(folder: str | os.PathLike[str], stem: str, image: np.ndarray, heatmap: np.ndarray, *,
                  caption: str | None = None, save_raw: bool = False, raw: np.ndarray | None = None,
                  original_size: tuple[int, ...] | None = None, outline: bool = False) -> Path:
    """Write ``<folder>/<stem>_heatmap.png`` (overlay of ``heatmap`` on ``image``, which may be a display copy of a
    film of ``original_size``) and, with ``save_raw``, ``<stem>_heatmap.npy`` (float32: ``raw``, the map at the
    film's own size, default ``heatmap``); return the PNG's path. Both are written atomically. ``outline``: outline
    the strongest region (:func:`render_overlay`)."""
    out = save_overlay(Path(folder) / f"{stem}_heatmap.png", image, heatmap, caption=caption,
                       original_size=original_size, outline=outline)
    if save_raw:
        buf = io.BytesIO()
        np.save(buf, np.asarray(heatmap if raw is None else raw, dtype=np.float32))
        atomic_write_bytes(Path(folder) / f"{stem}_heatmap.npy", buf.getvalue())
    return out


def unique_stems(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """File stems made unique in input order (case-insensitively): ``a``, ``a-2``, ``a-3``...

    Every stem fits :data:`STEM_MAX_BYTES` (UTF-8 bytes), so that ``<stem>_heatmap.png`` and ``.npy`` fit the
    file system's name limit: a longer stem is cut and ends in ``-`` and 8 hex digits of its SHA-256, which
    keeps two long names that differ only at the end apart.
    """
    seen: set[str] = set()
    out = []
    for p in paths:
        stem = Path(p).stem or "image"
        name, n = _fit_stem(stem, STEM_MAX_BYTES), 1
        while name.lower() in seen:
            n += 1
            suffix = f"-{n}"
            name = _fit_stem(stem, STEM_MAX_BYTES - len(suffix)) + suffix
        seen.add(name.lower())
        out.append(name)
    return out


def _fit_stem(stem: str, limit: int) -> str:
    if len(os.fsencode(stem)) <= limit:
        return stem
    digest = hashlib.sha256(os.fsencode(stem)).hexdigest()[:8]
    return f"{fit_name(stem, limit - 9)}-{digest}"
