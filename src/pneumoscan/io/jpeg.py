"""A faster JPEG decoder for the common case, giving exactly Pillow's pixels, and the scale rule both decoders share.

Pillow and ``simplejpeg`` both decode with libjpeg-turbo (the same integer IDCT, the same DCT-domain scaling), so
for an 8-bit baseline or progressive Huffman JPEG, grayscale or YCbCr, the two give the same pixels bit for bit
(``tests/test_decode_fast.py`` checks it on every branch; ``benchmarks/inference.py --decoders`` found every square
identical on the 40 full-resolution samples and 300 training films). ``simplejpeg`` skips Pillow's chunked reading
and the copy out of Pillow's image: 3-12 % of a full-resolution film's decode and resize (the rest is libjpeg-turbo's
own work, the same in both).

:func:`fast_luma` is only ever tried by :mod:`pneumoscan.io.images` after the header has been read and checked
against the pixel limit, and only on files :func:`frame_of` and the Pillow header show to be such a JPEG. Anything
it cannot do exactly as Pillow would (colour at full size, CMYK, YCCK, Adobe-marked, 12-bit, lossless, arithmetic
coded, an EXIF turn, several frames) and every error it raises, a libjpeg *warning* included (``strict``), go to
Pillow, which then decodes or refuses the file as before: the fast path changes no pixel and no verdict. Without
``simplejpeg`` installed, Pillow decodes everything.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np

__all__ = ["FAST_FRAMES", "Frame", "decoder_version", "draft_scale", "fast_available", "fast_luma", "frame_of"]

log = logging.getLogger("pneumoscan.io")

#: Start-of-frame markers the fast path decodes: baseline, extended sequential and progressive, Huffman coded.
FAST_FRAMES = (0xC0, 0xC1, 0xC2)
#: Markers that carry no length (RSTn, TEM) and may stand anywhere between segments.
_STANDALONE = {0x01, *range(0xD0, 0xD8)}
#: SOFn markers: C0-CF but DHT (C4), JPG (C8) and DAC (CC).
_SOF = set(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


class Frame(NamedTuple):
    """A JPEG's frame header (its SOFn segment): the marker, the sample precision in bits, the frame's ``width``
    and ``height`` in pixels as stored (before any EXIF turn), and the number of components."""

    marker: int
    precision: int
    height: int
    width: int
    components: int


def frame_of(data: bytes | memoryview) -> Frame | None:
    """The frame header of a JPEG stream, found by walking its segments from SOI; None when the stream is not a
    JPEG, is malformed, or reaches a scan or its end first (the caller then leaves the file to Pillow)."""
    n = len(data)
    if n < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    i = 2
    while i + 4 <= n:
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # a fill byte before the marker
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker in (0xD8, 0xD9, 0xDA):  # a second SOI, EOI or a scan before any frame
            return None
        length = (data[i + 2] << 8) | data[i + 3]
        if length < 2:
            return None
        if marker in _SOF:
            if length < 8 or i + 10 > n:
                return None
            return Frame(marker, data[i + 4], (data[i + 5] << 8) | data[i + 6], (data[i + 7] << 8) | data[i + 8],
                         data[i + 9])
        i += 2 + length
    return None


def draft_scale(width: int, height: int, side: int | None) -> int:
    """The DCT-domain reduction (1, 2, 4 or 8) that a decode for ``side`` uses: the largest whose result keeps
    both sides >= ``side``, as Pillow's ``draft((side, side))`` picks it; 1 (the full decode) when ``side`` is None or
    no reduction by at least 2 keeps both sides that large. The result is ``ceil(width / scale) x ceil(height /
    scale)`` pixels."""
    if side is None:
        return 1
    fit = min(width // side, height // side)
    for scale in (8, 4, 2):
        if fit >= scale:
            return scale
    return 1


@lru_cache(maxsize=1)
def _simplejpeg() -> Any:
    try:
        import simplejpeg
    except ImportError:
        log.debug("simplejpeg is not installed: Pillow decodes every JPEG")
        return None
    return simplejpeg


def fast_available() -> bool:
    """Whether the fast decoder (``simplejpeg``) is installed."""
    return _simplejpeg() is not None


def decoder_version() -> str:
    """The fast decoder and its version (``"simplejpeg 1.9.0"``), or ``"none"``: part of the decoded-image cache's key,
    since a decoder that gave other pixels would make other squares."""
    sj = _simplejpeg()
    return "none" if sj is None else f"simplejpeg {getattr(sj, '__version__', '?')}"


def fast_luma(data: bytes | memoryview, frame: Frame, scale: int) -> np.ndarray:
    """Decode a JPEG's luma at ``1/scale`` of its size (DCT-domain scaling), ``(ceil(H / scale), ceil(W / scale))
    uint8`` C-contiguous, through ``simplejpeg`` in strict mode (a libjpeg warning, e.g. a truncated stream, raises).

    ``frame`` (:func:`frame_of` of ``data``) must be one of :data:`FAST_FRAMES`, 8-bit, with 1 component, or 3
    components that libjpeg reads as YCbCr (the caller checks the colour space with Pillow's header); at full size
    (``scale`` 1) only 1 component, since Pillow's luma of a colour film is computed from RGB, not read.

    Raises:
        RuntimeError: simplejpeg is not installed, or it reports another size or colour space than ``frame``.
        ValueError: simplejpeg's own errors (a damaged or truncated stream).
    """
    sj = _simplejpeg()
    if sj is None:
        raise RuntimeError("simplejpeg is not installed")
    height, width, colorspace, _ = sj.decode_jpeg_header(data)
    expected = {1: "Gray", 3: "YCbCr"}.get(frame.components)
    if (height, width) != (frame.height, frame.width) or colorspace != expected:
        raise RuntimeError(f"simplejpeg reads a {width} x {height} {colorspace} JPEG, the frame header says "
                           f"{frame.width} x {frame.height} with {frame.components} components")
    out_h, out_w = -(-height // scale), -(-width // scale)
    # The smallest libjpeg-turbo scaling (M/8) giving at least this size is exactly 1/scale for these sizes.
    luma = sj.decode_jpeg(data, colorspace="GRAY", min_height=out_h if scale > 1 else 0,
                          min_width=out_w if scale > 1 else 0, strict=True)
    if luma.shape != (out_h, out_w, 1):
        raise RuntimeError(f"simplejpeg decoded {luma.shape[1]} x {luma.shape[0]}, not {out_w} x {out_h}")
    return np.ascontiguousarray(luma[:, :, 0])
