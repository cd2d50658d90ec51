"""Decode JPEG, PNG and DICOM files into one grayscale ``uint8`` array per image, and refuse bad input clearly.

Every decoded image is ``(H, W) uint8``, 0 = black .. 255 = white, in display orientation, with the
MONOCHROME2 convention (bone and consolidation bright). The format is sniffed from the bytes, never the name.

Bad files only raise :class:`ImageError` subclasses whose message names the file and the problem. A missing
or unreadable path raises the base :class:`ImageError` (reason ``file not found``), so callers indexing a data
set need one ``except ImageError``. This holds for *every* exception raised while reading one file, by design
rather than by listing the known ones: :func:`read_image` and :func:`read_image_info` run their whole body
inside one guard (:func:`_file_guard`) that turns any ``Exception`` into :class:`CorruptImageError` and a
``MemoryError`` into :class:`ImageMemoryError`, so a damaged header, a decoder bug or an exhausted heap costs
that file only. ``KeyboardInterrupt`` and ``SystemExit`` pass through. Truncated files are refused because
Pillow's global ``ImageFile.LOAD_TRUNCATED_IMAGES`` keeps its default, ``False``; this module never changes it.

File names can hold patient names, so log lines name a file by ``log_name`` when the caller gives one (the
server passes a hash); error messages, which go back to the person who sent the file, use ``name``.
"""

from __future__ import annotations

import io
import logging
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
from PIL import Image, ImageOps

__all__ = [
    "DEFAULT_MAX_PIXELS", "MIN_SIDE", "CorruptImageError", "EmptyFileError", "ImageError", "ImageInfo",
    "ImageMemoryError", "ImageTooLargeError", "ImageTooSmallError", "NotAnImageError", "UnsupportedDicomError",
    "read_image", "read_image_info", "resize_square", "sniff_format",
]

logger = logging.getLogger(__name__)

#: Refuse images with more pixels than this, from the header, before decoding (decompression-bomb guard).
DEFAULT_MAX_PIXELS = 60_000_000
#: Refuse images whose smaller side is under this many pixels.
MIN_SIDE = 64

#: Bytes needed to sniff every supported format (DICOM: 128-byte preamble + "DICM").
_HEAD_BYTES = 132
#: Label used in messages for in-memory input when the caller gives no name.
_BYTES_LABEL = "<image bytes>"
_SUPPORTED = "JPEG, PNG, DICOM, BMP or TIFF"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom", ".bmp", ".tif", ".tiff")
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_MODE_BITS = {"1": 1, "I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16, "I": 32, "F": 32}
_EXIF_ORIENTATION = 0x0112

Source = str | os.PathLike[str] | bytes


class ImageError(ValueError):
    """A file cannot be used as an image; ``str(err) == f"{err.path}: {err.reason}"``."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:  # keep (path, reason) across processes
        return (type(self), (self.path, self.reason))


class EmptyFileError(ImageError):
    """The file has no bytes at all."""


class NotAnImageError(ImageError):
    """The content is not a supported image format (judged from its bytes, not its name)."""


class CorruptImageError(ImageError):
    """The file claims a supported format but is truncated or damaged."""


class ImageTooSmallError(ImageError):
    """A side of the image is shorter than the minimum."""


class ImageTooLargeError(ImageError):
    """The image has more pixels than allowed; refused from the header, before decoding."""


class ImageMemoryError(ImageError):
    """Decoding the file ran out of memory (it is too large for what this process may use)."""


class UnsupportedDicomError(ImageError):
    """A valid DICOM file this package cannot use: several frames, no pixel data, or no decoder installed."""


@dataclass(frozen=True)
class ImageInfo:
    """Header facts about an image, read without decoding its pixels.

    ``width``/``height`` are in display orientation (after EXIF rotation), matching the ``(height, width)``
    that :func:`read_image` returns. ``mode`` is Pillow's (``"L"``, ``"RGB"``, ``"I;16"``...) or
    ``"DICOM:<PhotometricInterpretation>"``; ``bit_depth`` is bits per sample.
    """

    width: int
    height: int
    mode: str
    format: str
    bit_depth: int


def sniff_format(data_head: bytes) -> str | None:
    """Return ``"DICOM"``, ``"JPEG"``, ``"PNG"``, ``"BMP"`` or ``"TIFF"`` from a file's first 132 bytes, else None.

    DICOM is tested first: its 128-byte preamble may hold another format's header (dual TIFF/DICOM files).
    """
    head = bytes(data_head[:_HEAD_BYTES])
    if head[128:132] == b"DICM":
        return "DICOM"
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    # "BM" alone is too weak (text can start with it); also require a known DIB header size.
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in {12, 40, 52, 56, 64, 108, 124}:
        return "BMP"
    return None


def read_image(
    source: Source, *, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = MIN_SIDE,
    log_name: str | None = None,
) -> np.ndarray:
    """Decode one image file (path or bytes) to a grayscale array.

    Args:
        source: a file path, or the file's bytes (e.g. a web upload).
        name: label for error messages instead of the path (default: the path, or ``"<image bytes>"``).
        max_pixels: refuse images with more than ``width * height`` pixels, checked from the header
            (Pillow's own hard limit, twice ``Image.MAX_IMAGE_PIXELS``, still applies to Pillow formats).
        min_side: refuse images whose smaller side is under this many pixels.
        log_name: how log lines name the file (default: the same as error messages); pass a pseudonym when
            file names may identify a patient.

    Returns:
        ``(H, W) uint8`` array, 0 = black .. 255 = white, display orientation, MONOCHROME2 convention.

    Raises:
        ImageError: or a subclass, naming the file and the problem; never anything else for a bad file.
        TypeError: ``source`` is neither a path nor bytes (a programming error, not a bad file).
    """
    label = _label(source, name)
    with _file_guard(label):
        with _open_source(source, label) as (fp, fmt):
            if fmt == "DICOM":
                ds = _read_dicom_header(fp, label, header_only=False)
                _check_dicom(ds, label, max_pixels, min_side)
                with _decoder_errors(label, f"the DICOM pixel data ({_syntax_name(ds)})"):
                    gray = _dicom_to_gray(ds.pixel_array, ds, log_name or label)
            else:
                im = _open_pil(fp, label, fmt)
                _check_size(label, im.size[0], im.size[1], max_pixels, min_side)
                with _decoder_errors(label, f"the {fmt} data"):
                    if getattr(im, "n_frames", 1) > 1:
                        logger.warning("%s: file holds %d images; using the first", log_name or label, im.n_frames)
                    im.load()  # raises on truncation because LOAD_TRUNCATED_IMAGES is False
                    gray = _pil_to_gray(ImageOps.exif_transpose(im))
        logger.debug("decoded %s: %s, %d x %d", log_name or label, fmt, gray.shape[1], gray.shape[0])
        return np.ascontiguousarray(gray, dtype=np.uint8)


def read_image_info(
    source: Source, *, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = MIN_SIDE
) -> ImageInfo:
    """Return header facts about an image without decoding its pixels.

    Raises what :func:`read_image` raises for empty, non-image, too large, too small or corrupt-header files,
    and :class:`UnsupportedDicomError` for DICOM files it would refuse from their header. A damaged pixel
    stream is only found by :func:`read_image`. EXIF orientation stored after a PNG's pixel data is not read
    (that needs a decode), so such a PNG reports its stored orientation.
    """
    label = _label(source, name)
    with _file_guard(label), _open_source(source, label) as (fp, fmt):
        if fmt == "DICOM":
            ds = _read_dicom_header(fp, label, header_only=True)
            width, height = _check_dicom(ds, label, max_pixels, min_side)
            photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
            bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0)
            return ImageInfo(width, height, f"DICOM:{photometric}", "DICOM", bits)
        im = _open_pil(fp, label, fmt)
        width, height = im.size
        _check_size(label, width, height, max_pixels, min_side)
        with _decoder_errors(label, f"the {fmt} header"):
            orientation = 1
            if fmt != "PNG" or "exif" in im.info:
                orientation = int(im.getexif().get(_EXIF_ORIENTATION, 1) or 1)
        if orientation in (5, 6, 7, 8):  # rotated by 90 degrees
            width, height = height, width
        bits = 16 if (fmt == "PNG" and im.mode == "I") else _MODE_BITS.get(im.mode, 8)
        return ImageInfo(width, height, im.mode, fmt, bits)


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """Squeeze a whole ``(H, W) uint8`` image to ``(size, size) uint8``: aspect ratio not kept, no crop.

    The one resize used by the training cache, prediction and serving, matching how the training data were
    made: Pillow's ``resize(..., Image.Resampling.BILINEAR)`` without ``reducing_gap``. Pillow widens the
    bilinear (tent) filter by the reduction factor, so downscaling is already antialiased over each output
    pixel's footprint; ``reducing_gap`` would add a box pre-reduction whose factor depends on the input size.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 2 or image.dtype != np.uint8:
        got = f"{image.dtype} array of shape {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"resize_square expects a 2-D uint8 array, got {got}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"resize_square size must be a positive integer, got {size!r}")
    im = Image.fromarray(np.ascontiguousarray(image))
    return np.array(im.resize((int(size), int(size)), Image.Resampling.BILINEAR), dtype=np.uint8)


# --------------------------------------------------------------------------- input and checks


def _label(source: Source, name: str | None) -> str:
    """The file's name in messages; refuse a source that is neither a path nor bytes (a caller's bug)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return name or _BYTES_LABEL
    if isinstance(source, (str, os.PathLike)):
        try:
            return name or os.fspath(source)
        except TypeError:  # os.PathLike whose __fspath__ returns something else
            return name or repr(source)
    raise TypeError(f"source must be a path or bytes, got {type(source).__name__}")


@contextmanager
def _file_guard(label: str) -> Iterator[None]:
    """Make every failure while reading one file that file's :class:`ImageError`.

    This is the one place that decides it, so a new decoder, a damaged header that trips a library's lazy
    parser (pydicom raises ``NotImplementedError`` for an unknown VR, ``TypeError`` for a two-valued UID...)
    or an exhausted heap can never stop a batch. The original exception stays chained for ``--debug``.
    """
    try:
        yield
    except ImageError:
        raise
    except MemoryError as exc:
        raise ImageMemoryError(label, "not enough memory to decode this image; it is too large for this "
                                      "process (downscale it, or lower the pixel limit)") from exc
    except RecursionError as exc:
        raise CorruptImageError(label, "the file is damaged: its structure nests too deeply to read") from exc
    except Exception as exc:  # noqa: BLE001 - the point of this guard
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise CorruptImageError(label, f"the file is damaged or not valid: it could not be read "
                                       f"({type(exc).__name__}: {detail})") from exc


@contextmanager
def _open_source(source: Source, label: str) -> Iterator[tuple[IO[bytes], str]]:
    """Yield ``(binary file, sniffed format)``; refuse missing, empty and non-image input."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        fp: IO[bytes] = io.BytesIO(data)
        size = len(data)
    else:
        try:
            mode = os.stat(source).st_mode
            if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
                # Opening a FIFO would block for ever, a device could stream without end.
                raise ImageError(label, "not a regular file (a pipe, socket or device), so it cannot be an image "
                                        "file; copy the image to a file first")
            fp = open(source, "rb")  # noqa: SIM115 - closed by the with-block below
            size = os.fstat(fp.fileno()).st_size
        except OSError as exc:
            raise ImageError(label, _os_reason(exc, source)) from exc
    with fp:
        if size == 0:
            raise EmptyFileError(label, "the file is empty (0 bytes)")
        try:
            head = fp.read(_HEAD_BYTES)
            fp.seek(0)
        except OSError as exc:
            raise ImageError(label, _os_reason(exc)) from exc
        fmt = sniff_format(head)
        if fmt is None:
            raise NotAnImageError(label, _describe_unknown(head, label))
        yield fp, fmt


def _os_reason(exc: OSError, path: Any = None) -> str:
    """Plain words for why a file could not be opened or read."""
    import errno

    if isinstance(exc, FileNotFoundError):
        if path is not None and os.path.islink(path):
            return f"broken link: the symbolic link points to {os.readlink(path)!s}, which does not exist"
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "this is a folder, not an image file"
    if isinstance(exc, PermissionError):
        return "permission denied: this program is not allowed to read the file"
    if exc.errno == errno.ELOOP:
        return "the path is a loop of symbolic links that never reaches a file"
    if exc.errno == errno.ENAMETOOLONG:
        return "the file name is too long for this system"
    return f"the file cannot be read ({exc.strerror or exc})"


def _describe_unknown(head: bytes, label: str) -> str:
    """Say, in plain words, what unsupported content looks like."""
    if head.startswith(b"%PDF"):
        what = "a PDF document"
    elif head.startswith(b"PK\x03\x04"):
        what = "a ZIP archive"
    elif head.startswith(b"GIF8") or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        what = "a GIF or WebP image (convert it to PNG)"
    elif head[:2] in (b"\x02\x00", b"\x08\x00") and len(head) >= 8:
        what = ("a DICOM data set without the standard 128-byte preamble and 'DICM' marker "
                "(re-export it from the PACS as a DICOM Part 10 file)")
    elif all(b >= 32 and b != 127 or b in (9, 10, 13) for b in head):
        what = "text"
    else:
        what = "unrecognised binary data"
    suffix = os.path.splitext(label)[1].lower()
    note = f"; the name ends in {suffix}, but the content decides" if suffix in _IMAGE_SUFFIXES else ""
    return f"not an image this software can read: the content looks like {what}{note}. Supported: {_SUPPORTED}"


def _check_size(label: str, width: int, height: int, max_pixels: int, min_side: int) -> None:
    """Refuse images outside the allowed size, from header values only."""
    if width * height > max_pixels:
        raise ImageTooLargeError(
            label,
            f"image is {width} x {height} pixels ({width * height:,} pixels); the limit is {max_pixels:,}. "
            "It was refused before decoding to protect memory; downscale it or raise the max_pixels setting",
        )
    if min(width, height) < min_side:
        raise ImageTooSmallError(
            label, f"image is {width} x {height} pixels; the smallest side must be at least {min_side}"
        )


@contextmanager
def _decoder_errors(label: str, what: str) -> Iterator[None]:
    """Turn any decoder failure into an ImageError subclass; let ImageError and MemoryError through."""
    try:
        yield
    except (ImageError, MemoryError):
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(label, f"image is larger than the decoder's safety limit ({exc})") from exc
    except Exception as exc:  # decoders raise OSError, SyntaxError, ValueError, zlib.error, struct.error...
        detail = " ".join(str(exc).split()) or type(exc).__name__
        reason = f"the file is damaged or incomplete: {what} could not be decoded ({detail})"
        raise CorruptImageError(label, reason) from exc


# --------------------------------------------------------------------------- Pillow formats


def _open_pil(fp: IO[bytes], label: str, fmt: str) -> Image.Image:
    """Parse the header with Pillow, trying only the sniffed format."""
    with _decoder_errors(label, f"the {fmt} header"):
        return Image.open(fp, formats=[fmt])


def _pil_to_gray(im: Image.Image) -> np.ndarray:
    """Return ``(H, W) uint8`` luma of a loaded Pillow image.

    * 16/32-bit and float modes: linear min-max stretch of the image's own range, because many 16-bit
      X-rays use only 10-12 bits and a fixed ``/257`` would leave them nearly black. Constant image: zeros.
    * Transparency (RGBA, LA, palette with transparency): composited onto black, because transparent
      padding around a film means "no signal", which is black on an X-ray.
    * Colour: ITU-R 601-2 luma (Pillow's ``"L"`` conversion); CMYK goes through RGB.
    """
    if im.mode in _HIGH_DEPTH_MODES:
        return _stretch_to_uint8(np.asarray(im))
    if im.has_transparency_data:
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    if im.mode not in ("L", "RGB", "P", "1"):
        im = im.convert("RGB")
    if im.mode != "L":
        im = im.convert("L")
    return np.array(im, dtype=np.uint8)


def _stretch_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Map the array's own [min, max] linearly onto 0..255; constant (or empty) input gives zeros.

    Works in one float32 buffer, in place (about 4 bytes per pixel beside the input), because 16-bit films
    are the largest inputs a server decodes: float64 temporaries cost about 39 bytes per pixel.
    """
    if arr.size == 0:
        return np.zeros(arr.shape, dtype=np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        lo, hi = float(arr.min()), float(arr.max())
        values = arr.astype(np.float32)
    else:  # float TIFFs may hold NaN or inf
        values = arr.astype(np.float32)
        finite = np.isfinite(values)
        if not finite.any():
            return np.zeros(arr.shape, dtype=np.uint8)
        lo, hi = float(values[finite].min()), float(values[finite].max())
        np.nan_to_num(values, copy=False, nan=lo, posinf=hi, neginf=lo)
    if lo == hi:
        return np.zeros(arr.shape, dtype=np.uint8)
    values -= np.float32(lo)
    values *= np.float32(255.0 / (hi - lo))
    np.rint(values, out=values)
    np.clip(values, 0, 255, out=values)
    return values.astype(np.uint8)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Round values already on a 0..255 scale to uint8."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- DICOM


def _read_dicom_header(fp: IO[bytes], label: str, *, header_only: bool) -> Any:
    """Parse a DICOM Part 10 file; with ``header_only`` the pixel data are not read into memory."""
    import pydicom  # imported here so that PNG/JPEG-only users do not pay for it

    with _decoder_errors(label, "the DICOM header"):
        return pydicom.dcmread(fp, defer_size=1024 if header_only else None)


def _syntax_name(ds: Any) -> str:
    """Name the transfer syntax (how the pixel data are encoded) for messages."""
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if uid is None:
        return "transfer syntax not stated"
    name = uid.name if uid.name != str(uid) else "an unknown format"
    return f"{name}, transfer syntax {uid}"


def _check_dicom(ds: Any, label: str, max_pixels: int, min_side: int) -> tuple[int, int]:
    """Refuse DICOM files this package cannot use, from the header only; return ``(width, height)``."""
    from pydicom.pixels import get_decoder

    with _decoder_errors(label, "the DICOM header"):
        frames = int(ds.get("NumberOfFrames") or 1)
    if frames > 1:
        raise UnsupportedDicomError(
            label, f"DICOM file holds {frames} frames; only single-frame images (one X-ray per file) are supported"
        )
    if "PixelData" not in ds:
        raise UnsupportedDicomError(
            label, "DICOM file contains no image (no Pixel Data); it may be a report or other non-image object, "
            "or the file may be damaged or incomplete (a damaged header element can hide the rest of the file)",
        )
    if not ds.get("Rows") or not ds.get("Columns"):
        raise CorruptImageError(label, "DICOM header does not state the image size (Rows/Columns missing)")
    width, height = int(ds.Columns), int(ds.Rows)
    _check_size(label, width, height, max_pixels, min_side)
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if uid is None:
        return width, height
    try:
        decoder = get_decoder(uid)
        options = "" if decoder.is_available else f" (decoders for it: {'; '.join(decoder.missing_dependencies)})"
    except NotImplementedError:
        decoder, options = None, ""
    if decoder is None or not decoder.is_available:
        raise UnsupportedDicomError(
            label, f"DICOM pixel data are encoded as {_syntax_name(ds)}, which no installed decoder can read; "
            "install one, e.g. `pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg` or "
            f"`pip install python-gdcm`, or ask for the study to be exported uncompressed{options}",
        )
    return width, height


def _dicom_to_gray(arr: np.ndarray, ds: Any, log_name: str) -> np.ndarray:
    """Turn decoded DICOM pixels into ``(H, W) uint8`` for display.

    Monochrome: Modality LUT (rescale slope/intercept), then the VOI LUT or the first Window Center/Width,
    mapped from its full output range to 0..255 (neither present: min-max of the image), then MONOCHROME1
    inverted. Colour (RGB, YBR that pydicom converts to RGB, palette): ITU-R 601 luma of the nominal range.
    """
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        full_scale = float(np.iinfo(arr.dtype).max)
    else:
        full_scale = float(2 ** int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8) - 1)
    if arr.ndim == 3:
        rgb = arr[..., :3].astype(np.float64)
        luma = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
        return _to_uint8(luma * (255.0 / full_scale))
    if arr.ndim != 2:
        raise ValueError(f"unexpected pixel array shape {arr.shape}")

    values = apply_modality_lut(arr, ds)
    lut_items = ds.get("VOILUTSequence") or []
    has_lut = bool(lut_items) and "LUTDescriptor" in lut_items[0] and "LUTData" in lut_items[0]
    has_window = ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None
    scaled: np.ndarray | None = None
    try:
        if has_lut:  # same preference as apply_voi_lut(prefer_lut=True)
            entries, first = int(lut_items[0].LUTDescriptor[0]) or 2**16, int(lut_items[0].LUTDescriptor[1])
            table = apply_voi_lut(np.arange(first, first + entries, dtype=np.int64), ds)
            lo, hi = float(table.min()), float(table.max())
            out = apply_voi_lut(np.rint(values).astype(np.int64), ds).astype(np.float64)
            scaled = _scale(out, lo, hi)
        elif has_window:
            # pydicom maps the window onto the modality output range; probe its ends with -inf/+inf.
            lo, hi = (float(v) for v in apply_voi_lut(np.array([-np.inf, np.inf]), ds))
            scaled = _scale(apply_voi_lut(values, ds), lo, hi)
    except (ValueError, NotImplementedError, KeyError) as exc:
        logger.warning("%s: ignoring an invalid DICOM VOI LUT/window (%s); using the image's min-max instead",
                       log_name, exc)
    if scaled is None:
        values = np.asarray(values, dtype=np.float64)
        scaled = _scale(values, float(values.min()), float(values.max()))
    if photometric == "MONOCHROME1":  # low stored values are bright on a MONOCHROME1 display
        scaled = 255.0 - scaled
    return _to_uint8(scaled)


def _scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``lo -> 0`` and ``hi -> 255`` linearly (``lo > hi`` inverts); a zero range gives zeros."""
    if hi == lo:
        return np.zeros(np.shape(values), dtype=np.float64)
    return (np.asarray(values, dtype=np.float64) - lo) * (255.0 / (hi - lo))
