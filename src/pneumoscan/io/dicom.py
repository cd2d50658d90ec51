"""DICOM: read the header, refuse what cannot be used, and map the pixels to display intensities."""

from __future__ import annotations

import logging
from typing import IO, Any

import numpy as np

from pneumoscan.errors import CorruptImageError, UnsupportedDicomError
from pneumoscan.io.common import ImageContext, _check_size, _decoder_errors, _scale, _to_uint8

logger = logging.getLogger("pneumoscan.io")


def _read_dicom_header(fp: IO[bytes], label: str, *, header_only: bool, max_pixels: int | None = None) -> Any:
    """Parse a DICOM Part 10 file; with ``header_only`` the pixel data are not read into memory.

    A deflated data set (Deflated Explicit VR Little Endian) is inflated with a bound (:mod:`.deflated`), never
    whole as ``pydicom.dcmread`` would: ``max_pixels`` is checked from its header before its pixel data are inflated.
    """
    import pydicom  # imported here so that PNG/JPEG-only users do not pay for it
    from pydicom.dataset import FileMetaDataset
    from pydicom.filereader import read_dataset, read_preamble

    from pneumoscan.io.deflated import is_deflated, read_deflated_file

    with _decoder_errors(label, "the DICOM header"):
        start = fp.tell()
        preamble = read_preamble(fp, False)
        meta = FileMetaDataset(read_dataset(fp, is_implicit_VR=False, is_little_endian=True,
                                            stop_when=lambda tag, vr, length: tag.group != 2))
        if is_deflated(meta.get("TransferSyntaxUID")):
            return read_deflated_file(fp, preamble, meta, label, header_only=header_only,
                                      check_header=_header_check(label, max_pixels))
        fp.seek(start)
        return pydicom.dcmread(fp, defer_size=1024 if header_only else None)


def _header_check(label: str, max_pixels: int | None) -> Any:
    """What a deflated data set's header must pass before its pixel data are inflated: :func:`_check_dicom`."""
    if max_pixels is None:
        return None
    return lambda ds: _check_dicom(ds, label, max_pixels, 0)


def read_dicom_dataset(body: bytes | bytearray | memoryview, transfer_syntax: Any, *, name: str,
                       max_pixels: int) -> Any | None:
    """Parse a received data set (the bytes after the file meta, e.g. a C-STORE's) when its transfer syntax is
    deflated, inflating it with a bound (:mod:`.deflated`); None for any other syntax (pynetdicom's own decode is
    fine there: what it parses was received, byte for byte).

    Raises:
        ImageError: the data set inflates past its bound, or its header is refused (frames, over ``max_pixels``).
    """
    from pneumoscan.io.deflated import is_deflated, read_deflated_dataset

    if not is_deflated(transfer_syntax):
        return None
    with _decoder_errors(name, "the deflated DICOM data set"):
        return read_deflated_dataset(body, name, check_header=_header_check(name, max_pixels))


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


#: ImageContext field -> DICOM keyword.
_CONTEXT_TAGS = {
    "modality": "Modality", "body_part": "BodyPartExamined", "view": "ViewPosition",
    "age": "PatientAge", "sex": "PatientSex", "patient_id": "PatientID", "patient_name": "PatientName",
    "accession": "AccessionNumber", "study_date": "StudyDate", "study_uid": "StudyInstanceUID",
    "series_uid": "SeriesInstanceUID", "sop_uid": "SOPInstanceUID", "birth_date": "PatientBirthDate",
}


def _dicom_context(ds: Any) -> ImageContext:
    """The patient and study context of a DICOM data set; a missing or unreadable tag gives ``""``, never an error
    (a damaged optional tag must not cost the image its score)."""
    values = {}
    for field_name, keyword in _CONTEXT_TAGS.items():
        try:
            value = ds.get(keyword, "")
            text = "" if value is None else str(value)
        except Exception:  # noqa: BLE001 - pydicom parses lazily; a bad value raises here, not at read time
            text = ""
        values[field_name] = "".join(ch for ch in text if ch.isprintable()).strip()[:200]
    return ImageContext(format="DICOM", **values)
