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

import errno
import io
import logging
import os
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any, NamedTuple

import numpy as np
from PIL import Image, ImageOps

from pneumoscan.errors import (
    CorruptImageError,
    EmptyFileError,
    ImageError,
    ImageMemoryError,
    NotAnImageError,
)
from pneumoscan.io.common import (
    _BYTES_LABEL,
    _EXIF_ORIENTATION,
    _HEAD_BYTES,
    _HIGH_DEPTH_MODES,
    _MODE_BITS,
    DEFAULT_MAX_PIXELS,
    MIN_SIDE,
    ImageContext,
    ImageInfo,
    _check_size,
    _decoder_errors,
    _describe_unknown,
    sniff_format,
)
from pneumoscan.io.dicom import _check_dicom, _dicom_context, _dicom_to_gray, _read_dicom_header, _syntax_name
from pneumoscan.io.jpeg import FAST_FRAMES, draft_scale, fast_available, fast_luma, frame_of

__all__ = ["DecodedImage", "decode_image", "read_image", "read_image_context", "read_image_info",
           "read_image_with_context"]

logger = logging.getLogger("pneumoscan.io")

Source = str | os.PathLike[str] | bytes


class DecodedImage(NamedTuple):
    """One decoded image, as :func:`decode_image` returns it.

    Attributes:
        gray: ``(H, W) uint8``, 0 = black .. 255 = white, display orientation, MONOCHROME2 convention; a large JPEG
            decoded for ``reduce_to`` is ``1/scale`` of the file's size on each side (rounded up).
        context: the image's :class:`ImageContext` (patient, study, view; empty fields for non-DICOM).
        size: ``(height, width)`` of the image at its own size, in pixels, display orientation (``gray.shape``
            unless ``scale`` > 1).
        scale: the DCT-domain reduction of the decode: 1 (full size), 2, 4 or 8.
    """

    gray: np.ndarray
    context: ImageContext
    size: tuple[int, int]
    scale: int


def read_image_with_context(
    source: Source, *, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = MIN_SIDE,
    log_name: str | None = None, reduce_to: int | None = None,
) -> tuple[np.ndarray, ImageContext]:
    """Decode one image file (path or bytes) to a grayscale array, and read who and what it is:
    :func:`decode_image`'s ``(gray, context)``. Takes and raises what it does."""
    decoded = decode_image(source, name=name, max_pixels=max_pixels, min_side=min_side, log_name=log_name,
                           reduce_to=reduce_to)
    return decoded.gray, decoded.context


def decode_image(
    source: Source, *, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = MIN_SIDE,
    log_name: str | None = None, reduce_to: int | None = None,
) -> DecodedImage:
    """Decode one image file (path or bytes) to a grayscale array, and read who and what it is.

    Args:
        source: a file path, the file's bytes (e.g. a web upload), or a parsed ``pydicom.Dataset`` (decoded from
            its pixel data; nothing is parsed again).
        name: label for error messages instead of the path (default: the path, or ``"<image bytes>"``).
        max_pixels: refuse images with more than ``width * height`` pixels, checked from the header
            (Pillow's own hard limit, twice ``Image.MAX_IMAGE_PIXELS``, still applies to Pillow formats).
        min_side: refuse images whose smaller side is under this many pixels.
        log_name: how log lines name the file (default: the same as error messages); pass a pseudonym when
            file names may identify a patient.
        reduce_to: for a consumer that only needs a downscaled image (the model's square): a JPEG at least twice
            this size on both sides is decoded in the DCT domain at 1/2, 1/4 or 1/8 scale (the largest whose
            result keeps both sides >= ``reduce_to``; Pillow's ``draft``, which then also reads a colour JPEG's
            luma directly). Smaller JPEGs, PNG and DICOM decode as without it, bit for bit. None: full size.
            Either way an 8-bit grayscale or YCbCr JPEG is decoded by :mod:`pneumoscan.io.jpeg` when ``simplejpeg``
            is installed (the same pixels as Pillow's, faster), every other file, and any it cannot do, by Pillow.

    Returns:
        The :class:`DecodedImage`: the pixels, the context, the image's own size and the decode's scale.

    Raises:
        ImageError: or a subclass, naming the file and the problem; never anything else for a bad file.
        TypeError: ``source`` is neither a path nor bytes (a programming error, not a bad file).
    """
    if reduce_to is not None and (isinstance(reduce_to, bool) or not isinstance(reduce_to, int) or reduce_to < 1):
        raise ValueError(f"reduce_to must be a positive integer or None, got {reduce_to!r}")
    if _is_dataset(source):  # parsed already (the DICOM node's C-STORE): its pixels, never its bytes again
        gray, context = _read_dataset(source, name or _DATASET_LABEL, max_pixels, min_side, log_name)
        return DecodedImage(gray, context, (int(gray.shape[0]), int(gray.shape[1])), 1)
    label = _label(source, name)
    with _file_guard(label):
        scale = 1
        with _open_source(source, label) as (fp, fmt):
            if fmt == "DICOM":
                ds = _read_dicom_header(fp, label, header_only=False, max_pixels=max_pixels)
                context = _dicom_context(ds)
                _check_dicom(ds, label, max_pixels, min_side)
                with _decoder_errors(label, f"the DICOM pixel data ({_syntax_name(ds)})"):
                    gray = _dicom_to_gray(ds.pixel_array, ds, log_name or label)
                size = (int(gray.shape[0]), int(gray.shape[1]))
            else:
                context = ImageContext(format=fmt)
                im = _open_pil(fp, label, fmt)
                _check_size(label, im.size[0], im.size[1], max_pixels, min_side)
                with _decoder_errors(label, f"the {fmt} data"):
                    if getattr(im, "n_frames", 1) > 1:
                        logger.warning("%s: file holds %d images; using the first", log_name or label, im.n_frames)
                    gray, size, scale = _decode_raster(fp, im, fmt, reduce_to, log_name or label)
        logger.debug("decoded %s: %s, %d x %d (1/%d scale)", log_name or label, fmt, gray.shape[1], gray.shape[0],
                     scale)
        return DecodedImage(np.ascontiguousarray(gray, dtype=np.uint8), context, size, scale)


def read_image_context(source: Source, *, name: str | None = None) -> ImageContext:
    """The image's :class:`ImageContext` from its header alone (no pixels decoded): DICOM tags, or the format.

    Raises:
        ImageError: the file cannot be read or is not an image.
    """
    if _is_dataset(source):
        with _file_guard(name or _DATASET_LABEL):
            return _dicom_context(source)
    label = _label(source, name)
    with _file_guard(label), _open_source(source, label) as (fp, fmt):
        if fmt == "DICOM":
            return _dicom_context(_read_dicom_header(fp, label, header_only=True))
        return ImageContext(format=fmt)


def read_image(
    source: Source, *, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = MIN_SIDE,
    log_name: str | None = None, reduce_to: int | None = None,
) -> np.ndarray:
    """Decode one image file (path or bytes) to a grayscale ``(H, W) uint8`` array: :func:`read_image_with_context`
    without the context. Raises what it raises."""
    return read_image_with_context(source, name=name, max_pixels=max_pixels, min_side=min_side,
                                   log_name=log_name, reduce_to=reduce_to)[0]


def read_image_info(
    source: Source, *, name: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS, min_side: int = MIN_SIDE
) -> ImageInfo:
    """Return header facts about an image without decoding its pixels.

    Raises what :func:`read_image` raises for empty, non-image, too large, too small or corrupt-header files,
    and :class:`UnsupportedDicomError` for DICOM files it would refuse from their header. A damaged pixel
    stream is only found by :func:`read_image`. EXIF orientation stored after a PNG's pixel data is not read
    (that needs a decode), so such a PNG reports its stored orientation. ``source`` may also be a parsed
    ``pydicom.Dataset`` (the DICOM node's C-STORE): its header is read, nothing is parsed again.
    """
    if _is_dataset(source):
        with _file_guard(name or _DATASET_LABEL):
            return _dicom_info(source, name or _DATASET_LABEL, max_pixels, min_side)
    label = _label(source, name)
    with _file_guard(label), _open_source(source, label) as (fp, fmt):
        if fmt == "DICOM":
            return _dicom_info(_read_dicom_header(fp, label, header_only=True), label, max_pixels, min_side)
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


def _dicom_info(ds: Any, label: str, max_pixels: int, min_side: int) -> ImageInfo:
    width, height = _check_dicom(ds, label, max_pixels, min_side)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 0)
    return ImageInfo(width, height, f"DICOM:{photometric}", "DICOM", bits)


#: How messages name a DICOM data set given without a name.
_DATASET_LABEL = "<DICOM data set>"


def _is_dataset(source: Any) -> bool:
    """True for a ``pydicom.Dataset`` (judged without importing pydicom: a caller holding one has imported it).

    Another decoding thread may be importing pydicom at this moment: the module is then in ``sys.modules`` without
    its ``Dataset`` yet, and ``source`` cannot be one (a caller holding a Dataset finished that import)."""
    dataset = getattr(sys.modules.get("pydicom"), "Dataset", None)
    return dataset is not None and isinstance(source, dataset)


def _read_dataset(ds: Any, label: str, max_pixels: int, min_side: int,
                  log_name: str | None) -> tuple[np.ndarray, ImageContext]:
    """:func:`read_image_with_context` of a DICOM data set already parsed (no bytes read, no parse again)."""
    with _file_guard(label):
        context = _dicom_context(ds)
        _check_dicom(ds, label, max_pixels, min_side)
        with _decoder_errors(label, f"the DICOM pixel data ({_syntax_name(ds)})"):
            gray = _dicom_to_gray(ds.pixel_array, ds, log_name or label)
        logger.debug("decoded %s: DICOM data set, %d x %d", log_name or label, gray.shape[1], gray.shape[0])
        return np.ascontiguousarray(gray, dtype=np.uint8), context


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


def _open_pil(fp: IO[bytes], label: str, fmt: str) -> Image.Image:
    """Parse the header with Pillow, trying only the sniffed format."""
    with _decoder_errors(label, f"the {fmt} header"):
        return Image.open(fp, formats=[fmt])


def _decode_raster(fp: IO[bytes], im: Image.Image, fmt: str, reduce_to: int | None,
                   log_label: str) -> tuple[np.ndarray, tuple[int, int], int]:
    """The pixels of a file whose Pillow header ``im`` is open and checked: ``(gray, (height, width) at full size in
    display orientation, scale)``. A JPEG at least twice ``reduce_to`` on both sides is decoded at 1/2, 1/4 or 1/8
    scale (:func:`~pneumoscan.io.jpeg.draft_scale`; Pillow's ``draft``, which then also reads a colour JPEG's luma
    directly); nothing at all changes (not even the luma shortcut for colour) when no such scale exists. The fast
    decoder is tried first where it gives Pillow's pixels; Pillow decodes the rest, and whatever it declined."""
    width, height = im.size
    scale = draft_scale(width, height, reduce_to) if fmt == "JPEG" else 1
    if fmt == "JPEG":
        luma = _fast_jpeg(fp, im, scale, log_label)
        if luma is not None:
            return luma, (height, width), scale
    if scale > 1:
        assert reduce_to is not None
        im.draft("L", (reduce_to, reduce_to))
        try:  # the film's own size says whether it is turned (the decode's shape cannot when it is square)
            turned = im.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
        except Exception:  # noqa: BLE001 - a damaged EXIF: exif_transpose below decides what it means
            turned = False
    im.load()  # raises on truncation because LOAD_TRUNCATED_IMAGES is False
    ImageOps.exif_transpose(im, in_place=True)  # no copy of the film when it needs no turn
    gray = _pil_to_gray(im)
    if scale == 1:
        return gray, (int(gray.shape[0]), int(gray.shape[1])), 1
    return gray, ((width, height) if turned else (height, width)), scale


def _fast_jpeg(fp: IO[bytes], im: Image.Image, scale: int, log_label: str) -> np.ndarray | None:
    """:func:`~pneumoscan.io.jpeg.fast_luma` of the file when it gives exactly Pillow's pixels (an 8-bit baseline
    or progressive JPEG, grayscale, or YCbCr decoded at reduced scale, not turned by EXIF, one frame), else None;
    None too when it fails for any reason but memory, so that Pillow decodes or refuses the file as it always did."""
    if not fast_available() or im.format != "JPEG" or getattr(im, "n_frames", 1) != 1:
        return None
    if im.mode not in ("L", "RGB") or (im.mode == "RGB" and (scale == 1 or "adobe" in im.info)):
        return None  # Pillow's luma of a colour film at full size is computed from RGB; CMYK, YCCK, Adobe: Pillow
    try:
        if im.getexif().get(_EXIF_ORIENTATION, 1) not in (1, None):
            return None
        start = fp.tell()
        fp.seek(0)
        data = fp.read()
        fp.seek(start)  # Pillow's own decode (the fallback) seeks where it needs
        frame = frame_of(data)
        if frame is None or frame.marker not in FAST_FRAMES or frame.precision != 8 \
                or frame.components != {"L": 1, "RGB": 3}[im.mode] or (frame.width, frame.height) != im.size:
            return None
        return fast_luma(data, frame, scale)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow decides every file the fast path does not take
        logger.debug("%s: fast JPEG decoding declined (%s: %s); Pillow decodes it", log_label, type(exc).__name__, exc)
        return None


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
