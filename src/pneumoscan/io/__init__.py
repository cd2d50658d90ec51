"""Decoding: JPEG, PNG, TIFF, BMP and DICOM files in, one grayscale ``(H, W) uint8`` array out.

:func:`read_image` and :func:`read_image_info` are the entry points (:mod:`.images`); :mod:`.dicom` holds the
DICOM specifics and :mod:`.common` what every format shares. Every failure while reading one file is that
file's :class:`~pneumoscan.errors.ImageError`. Resizing to the model's input is not decoding: it lives in
:mod:`pneumoscan.preprocessing`.
"""

from __future__ import annotations

from pneumoscan.errors import (
    CorruptImageError,
    EmptyFileError,
    ImageError,
    ImageMemoryError,
    ImageTooLargeError,
    ImageTooSmallError,
    NotAnImageError,
    UnsupportedDicomError,
)
from pneumoscan.io.common import DEFAULT_MAX_PIXELS, MIN_SIDE, ImageContext, ImageInfo, sniff_format
from pneumoscan.io.dicom import read_dicom_dataset
from pneumoscan.io.images import read_image, read_image_context, read_image_info, read_image_with_context

__all__ = [
    "DEFAULT_MAX_PIXELS", "MIN_SIDE", "CorruptImageError", "EmptyFileError", "ImageContext", "ImageError", "ImageInfo",
    "ImageMemoryError", "ImageTooLargeError", "ImageTooSmallError", "NotAnImageError", "UnsupportedDicomError",
    "read_dicom_dataset", "read_image", "read_image_context", "read_image_info", "read_image_with_context",
    "sniff_format",
]
