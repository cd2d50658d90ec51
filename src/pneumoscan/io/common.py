"""What every decoder shares: limits, format sniffing, size checks, the decoder-error guard, intensity helpers."""

from __future__ import annotations

import datetime
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from pneumoscan.constants import IMAGE_SUFFIXES, SUPPORTED_FORMATS
from pneumoscan.errors import CorruptImageError, ImageError, ImageTooLargeError, ImageTooSmallError

__all__ = ["DEFAULT_MAX_PIXELS", "MIN_SIDE", "ImageContext", "ImageInfo", "sniff_format"]

#: Refuse images with more pixels than this, from the header, before decoding (decompression-bomb guard).
DEFAULT_MAX_PIXELS = 60_000_000
#: Refuse images whose smaller side is under this many pixels.
MIN_SIDE = 64

#: Bytes needed to sniff every supported format (DICOM: 128-byte preamble + "DICM").
_HEAD_BYTES = 132
#: Label used in messages for in-memory input when the caller gives no name.
_BYTES_LABEL = "<image bytes>"
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
_MODE_BITS = {"1": 1, "I;16": 16, "I;16L": 16, "I;16B": 16, "I;16N": 16, "I": 32, "F": 32}
_EXIF_ORIENTATION = 0x0112

Source = str | os.PathLike[str] | bytes


#: A DICOM Age String as written in practice: digits (leading zeros or not), an optional unit, spaces anywhere.
_AGE_RE = re.compile(r"^\s*0*(?P<n>\d{1,3})\s*(?P<unit>[DdWwMmYy]?)\s*$")
_AGE_UNITS = {"D": 365.25, "W": 52.1775, "M": 12.0, "Y": 1.0}


def _dicom_date(text: str) -> datetime.date | None:
    digits = "".join(ch for ch in str(text) if ch.isdigit())
    if len(digits) != 8:
        return None
    try:
        return datetime.date(int(digits[:4]), int(digits[4:6]), int(digits[6:]))
    except ValueError:
        return None


def _years_between(birth: str, study: str) -> float | None:
    """Years from a DICOM birth date to a DICOM study date, or None when either is unreadable or the birth is after
    the study."""
    b, s = _dicom_date(birth), _dicom_date(study)
    if b is None or s is None or b > s:
        return None
    return (s - b).days / 365.25


@dataclass(frozen=True)
class ImageContext:
    """Who and what an image is, from its DICOM header; every field is ``""`` for JPEG, PNG, TIFF and BMP, and
    for a tag the header lacks or holds an unreadable value in.

    The field names are the one vocabulary of every output (Python, CSV, JSON, the store, the page):
    :data:`OUTPUT_KEYS` by :meth:`to_dict`. ``age`` is the DICOM Age String as written (``"081Y"``, ``"018M"``);
    :meth:`age_years` parses it. ``view`` is the ViewPosition, ``sex`` the PatientSex. ``patient_name`` must
    never be logged, and is in no output.
    """

    format: str = ""
    modality: str = ""
    body_part: str = ""
    view: str = ""
    age: str = ""
    sex: str = ""
    patient_id: str = ""
    patient_name: str = field(default="", repr=False)  # never in logs, reprs or outputs
    accession: str = ""
    study_date: str = ""
    study_uid: str = ""
    series_uid: str = ""
    sop_uid: str = ""
    birth_date: str = field(default="", repr=False)  # only to derive the age; in no output

    #: The fields every output carries, in this order (never the patient's name).
    OUTPUT_KEYS: ClassVar[tuple[str, ...]] = ("patient_id", "accession", "study_date", "age", "sex", "view",
                                               "study_uid", "series_uid", "sop_uid")

    def age_years(self) -> float | None:
        """The patient's age in years, or None when the header does not say.

        ``age`` is read as real systems write it, not only as the standard's ``nnnY``: ``"081Y"``, ``"81Y"``,
        ``"81"``, ``"81 Y"``, ``"6m"``, ``"030D"``, ``"4W"`` (a bare number is years; case, padding and leading zeros
        do not matter). Without a readable ``age``, the age at the study from ``birth_date`` and ``study_date``
        (DICOM dates ``YYYYMMDD``; None when either is missing or the birth is after the study)."""
        m = _AGE_RE.match(self.age)
        if m:
            return int(m["n"]) / _AGE_UNITS[(m["unit"] or "Y").upper()]
        return _years_between(self.birth_date, self.study_date)

    def age_source(self) -> str:
        """Where :meth:`age_years` came from, for messages: ``"PatientAge 81"``, ``"PatientBirthDate and StudyDate"``
        or ``""``."""
        if _AGE_RE.match(self.age):
            return f"PatientAge {self.age.strip()}"
        if _years_between(self.birth_date, self.study_date) is not None:
            return "PatientBirthDate and StudyDate"
        return ""

    def to_dict(self) -> dict[str, str]:
        """The :data:`OUTPUT_KEYS` and their values (``""`` when unknown); never the patient's name."""
        return {k: getattr(self, k) for k in self.OUTPUT_KEYS}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], **extra: str) -> ImageContext:
        """A context from a mapping of :data:`OUTPUT_KEYS` (other keys, the patient's name among them, ignored)."""
        return cls(**{k: "" if values.get(k) is None else str(values[k]) for k in cls.OUTPUT_KEYS}, **extra)


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
    note = f"; the name ends in {suffix}, but the content decides" if suffix in IMAGE_SUFFIXES else ""
    return f"not an image this software can read: the content looks like {what}{note}. Supported: {SUPPORTED_FORMATS}"


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


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """Round values already on a 0..255 scale to uint8."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``lo -> 0`` and ``hi -> 255`` linearly (``lo > hi`` inverts); a zero range gives zeros."""
    if hi == lo:
        return np.zeros(np.shape(values), dtype=np.float64)
    return (np.asarray(values, dtype=np.float64) - lo) * (255.0 / (hi - lo))
