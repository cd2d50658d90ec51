"""The Secondary Capture of one image's result: the heatmap overlay (occlusion sensitivity) with a burned-in caption."""

from __future__ import annotations

import re
from copy import deepcopy
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumoscan import __version__
from pneumoscan.dicom_out.source import (
    MANUFACTURER,
    SC_SERIES_NUMBER,
    DicomOutputError,
    checked_source,
    new_uid,
    put_back,
)

if TYPE_CHECKING:
    import pydicom

    from pneumoscan.result import Result

__all__ = ["make_sc", "sc_pixels"]


def _burn_caption(rgb: np.ndarray, caption: str) -> np.ndarray:
    """``rgb`` under a black band holding ``caption`` in white, wrapped to the image's width."""
    from PIL import Image, ImageDraw, ImageFont

    h, w = rgb.shape[:2]
    px = max(10, round(w / 45))
    try:
        font: Any = ImageFont.load_default(size=px)
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        font = ImageFont.load_default()
    pad = max(3, px // 3)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    lines: list[str] = []
    for word in caption.split():  # greedy wrap by measured width; a word wider than the film is cut by the edge
        if lines and probe.textlength(f"{lines[-1]} {word}", font=font) <= w - 2 * pad:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    lines = lines or [""]
    line_h = probe.textbbox((0, 0), "Ag", font=font)[3] + pad // 2
    band = len(lines) * line_h + 2 * pad
    canvas = Image.new("RGB", (w, h + band), (0, 0, 0))
    canvas.paste(Image.fromarray(rgb), (0, band))
    draw = ImageDraw.Draw(canvas)
    for i, line in enumerate(lines):
        draw.text((pad, pad + i * line_h), line, fill=(255, 255, 255), font=font)
    return np.asarray(canvas)


#: Body Part Examined values (PS3.16 CID 4031) of unpaired parts, which have no Laterality: the General Series
#: module's Type 2C condition (only those dciodvfy also knows as unpaired, so that none is left out wrongly).
_UNPAIRED_PARTS = frozenset({
    "CHEST", "ABDOMEN", "PELVIS", "ABDOMENPELVIS", "CHESTABDOMEN", "CHESTABDPELVIS", "HEAD", "HEADNECK", "NECK",
    "SKULL", "BRAIN", "SPINE", "CSPINE", "TSPINE", "LSPINE", "SSPINE", "CTSPINE", "TLSPINE", "LSSPINE", "COCCYX",
    "STERNUM", "MEDIASTINUM", "TRACHEA", "ESOPHAGUS", "HEART", "WHOLEBODY"})
_CS = re.compile(r"[A-Z0-9_ ]{1,16}")


def _series_anatomy(ds: pydicom.Dataset) -> dict[str, str]:
    """The SC's Body Part Examined and Laterality (General Series), from the source, as the module wants them:
    Body Part Examined (Type 3) copied, in capitals, when it is a well-formed code string; Laterality (Type 2C,
    required for a paired part) absent for an unpaired part (a chest), else the source's Laterality or Image
    Laterality when it is ``R`` or ``L``, else empty (unknown). Returns the attributes to set, by keyword."""
    part = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    out = {"BodyPartExamined": part} if _CS.fullmatch(part) else {}
    if out and part in _UNPAIRED_PARTS:
        return out
    side = ""
    for keyword in ("Laterality", "ImageLaterality"):
        value = str(ds.get(keyword, "") or "").strip().upper()
        if value in ("R", "L"):
            side = value
            break
    return {**out, "Laterality": side}


def make_sc(source: pydicom.Dataset, result: Result, overlay_rgb: np.ndarray | None = None, *,
            series_number: int = SC_SERIES_NUMBER) -> pydicom.Dataset:
    """A Secondary Capture of one image's :class:`~pneumoscan.result.Result`: ``overlay_rgb`` (``(H, W, 3) uint8``;
    default :func:`sc_pixels` of the result, from the film it kept) with its :meth:`~pneumoscan.result.Result.caption`
    burned in on a band above it, in the source's study (new series, new instance), patient and study modules
    copied; the source's Patient Orientation, Body Part Examined and Laterality (absent for an unpaired part), and
    its Lossy Image Compression when that is ``01``; Conversion Type WSD; BurnedInAnnotation YES; the source
    referenced in SourceImageSequence.

    Raises:
        DicomOutputError: the source lacks a needed UID, highdicom refused the image, or the result kept no film
            (score it with ``keep_film``/``explain`` so that nothing decodes the file again).
        ValueError: ``overlay_rgb`` is not ``(H, W, 3) uint8``.
    """
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian

    caption = result.caption()
    arr = np.asarray(sc_pixels(result) if overlay_rgb is None else overlay_rgb)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8 or min(arr.shape[:2]) < 1:
        raise ValueError(f"overlay_rgb must be an (H, W, 3) uint8 array, got {arr.dtype} {arr.shape}")
    ds, kept = checked_source(source)
    pixels = np.ascontiguousarray(_burn_caption(arr, caption))
    try:
        # highdicom wants a patient orientation for an image in patient coordinates; the overlay keeps the source's
        # pixel grid, so its orientation is the source's, written below (empty when unknown: it is Type 2C).
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=ds, pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
            coordinate_system="PATIENT", series_instance_uid=new_uid(), series_number=int(series_number),
            sop_instance_uid=new_uid(), instance_number=1, manufacturer=MANUFACTURER,
            patient_orientation=("L", "F"), transfer_syntax_uid=ExplicitVRLittleEndian,
            series_description="pneumoscan heatmap (decision support only)",
            software_versions=f"pneumoscan {__version__}")
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise DicomOutputError(f"a secondary capture could not be made for this image: {exc}") from exc
    sc.copy_patient_and_study_information(ds)  # the whole modules (PatientAge...), as the SR has them
    put_back(sc, kept)
    sc.PatientOrientation = ds.get("PatientOrientation", "") or ""
    for keyword, value in _series_anatomy(ds).items():  # Laterality is Type 2C: absent for a chest, never forgotten
        setattr(sc, keyword, value)
    sc.BurnedInAnnotation = "YES"
    sc.ConversionType = "WSD"  # made by software from a digital image (highdicom says DI, a digital interface)
    if str(ds.get("LossyImageCompression", "") or "").strip() == "01":  # PS3.3 C.7.6.1.1.5: lossy stays lossy
        for keyword in ("LossyImageCompression", "LossyImageCompressionRatio", "LossyImageCompressionMethod"):
            if keyword in ds:
                sc[keyword] = deepcopy(ds[keyword])
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = ("Heatmap (occlusion sensitivity) overlay and result caption by pneumoscan; decision "
                                "support only, not a diagnosis")
    sc.ImageComments = caption[:10240]
    ref = Dataset()
    ref.ReferencedSOPClassUID = ds.SOPClassUID
    ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    sc.SourceImageSequence = [ref]
    return sc


def sc_pixels(result: Result, *, max_side: int = 1024, outline: bool = False) -> np.ndarray:
    """What a Secondary Capture shows (before its caption): the heatmap overlay on the film the result kept, or, for a
    result without an explanation (an image out of scope: a map of "evidence" on it would read as a finding), the
    film alone. ``outline``: also outline the strongest region. Returns ``(h, w, 3) uint8`` at most ``max_side``
    long.

    Raises:
        DicomOutputError: the result kept no film.
    """
    from pneumoscan.inference.render import render_overlay

    if result.film is None:
        raise DicomOutputError(f"{result.source}: the result keeps no film for a secondary capture; score it with "
                               "its film kept (explain=...) so that nothing decodes the file again")
    heat = result.heatmap(result.film.shape)
    if heat is not None:
        return render_overlay(result.film, heat, max_side=max_side, outline=outline)
    return render_overlay(result.film, np.zeros((1, 1), np.float32), alpha=0.0, max_side=max_side, legend=False)
