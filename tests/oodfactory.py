"""Things that are not pediatric frontal chest films, for the scope gate's tests and ``benchmarks/ood_methods.py``.

Generated here (blank and uniform images, noise, gradients, a typed page, checkerboards), or read from the
MIT-licensed sample DICOM files that ``pydicom`` and the ``pydicom-data`` package install (a CT and an MR slice,
an ultrasound frame, a photograph of a face, a radiograph of a tibia, an adult chest radiograph): nothing is
copied into this repository. :func:`out_of_scope_images` returns ``(kind, name, (H, W) uint8)`` triples;
:func:`sample_dicom` the path of an installed sample file, or None.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: Installed sample DICOM files: (kind, file name).
SAMPLE_DICOMS = (
    ("ct", "CT_small.dcm"),
    ("ct", "liver_1frame.dcm"),
    ("mr", "MR_small.dcm"),
    ("mr", "MR2_UNCI.dcm"),
    ("ultrasound", "US1_UNCI.dcm"),
    ("photograph", "OT-PAL-8-face.dcm"),
    ("other_radiograph", "RG3_UNCI.dcm"),
)


def sample_dicom(name: str) -> Path | None:
    """The installed sample file ``name`` (pydicom's own test files, or pydicom-data's), or None."""
    try:
        from pydicom.data import get_testdata_file

        found = get_testdata_file(name)
    except Exception:  # noqa: BLE001 - pydicom-data missing or its index unreadable: the caller skips
        return None
    return Path(found) if found else None


def _text_page(h: int, w: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    page = Image.new("L", (w, h), 245)
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default()
    words = ["patient", "report", "chest", "the", "of", "and", "findings", "clinical", "history", "no", "acute",
             "impression", "signed", "date", "radiology", "department", "page", "normal", "study"]
    y = 20
    while y < h - 20:
        line = " ".join(rng.choice(words, size=rng.integers(6, 14)))
        draw.text((20, y), line, fill=int(rng.integers(0, 60)), font=font)
        y += 14
    return np.asarray(page, dtype=np.uint8)


def generated(size: int = 512, seed: int = 0) -> Iterator[tuple[str, str, np.ndarray]]:
    """Synthetic out-of-scope images, ``size`` pixels square."""
    rng = np.random.default_rng(seed)
    h = w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    yield "blank", "black", np.zeros((h, w), np.uint8)
    yield "blank", "white", np.full((h, w), 255, np.uint8)
    yield "blank", "gray", np.full((h, w), 128, np.uint8)
    yield "blank", "gray_with_sensor_noise", np.clip(rng.normal(128, 2, (h, w)), 0, 255).astype(np.uint8)
    yield "noise", "uniform_noise", rng.integers(0, 256, (h, w), dtype=np.uint8)
    yield "noise", "gaussian_noise", np.clip(rng.normal(128, 50, (h, w)), 0, 255).astype(np.uint8)
    yield "gradient", "horizontal_gradient", (xx / (w - 1) * 255).astype(np.uint8)
    yield "gradient", "vertical_gradient", (yy / (h - 1) * 255).astype(np.uint8)
    r = np.hypot(yy - h / 2, xx - w / 2) / (0.71 * size)
    yield "gradient", "radial_gradient", np.clip(255 * (1 - r), 0, 255).astype(np.uint8)
    yield "text", "typed_page", _text_page(h, int(w * 0.77), seed)
    yield "text", "typed_page_inverted", 255 - _text_page(h, int(w * 0.77), seed + 1)
    cb = ((yy // 32 + xx // 32) % 2 * 255).astype(np.uint8)
    yield "pattern", "checkerboard", cb


def photographs() -> Iterator[tuple[str, str, np.ndarray]]:
    """The two photographs scikit-learn installs (a temple, a flower), in grayscale."""
    try:
        from sklearn.datasets import load_sample_images
    except ImportError:
        return
    for name, img in zip(("china", "flower"), load_sample_images().images):
        yield "photograph", name, np.asarray(Image.fromarray(img).convert("L"))


def part10_bytes(path: Path, **tags: str) -> bytes:
    """The sample file as a DICOM Part 10 file (some samples lack the preamble and file meta), with ``tags``
    set (e.g. ``PatientAge="081Y"``), in memory."""
    import io

    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

    ds = pydicom.dcmread(path, force=True)
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if ds.is_implicit_VR else ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", "1.2.840.10008.5.1.4.1.1.7")
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", generate_uid())
    ds.file_meta = meta
    for key, value in tags.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def dicom_samples() -> Iterator[tuple[str, str, bytes]]:
    """``(kind, name, Part 10 bytes)`` of the installed sample DICOM files that are not chest films."""
    for kind, name in SAMPLE_DICOMS:
        path = sample_dicom(name)
        if path is not None:
            yield kind, name, part10_bytes(path)


def out_of_scope_images(size: int = 512) -> list[tuple[str, str, np.ndarray]]:
    """Every generated, photographed and installed DICOM out-of-scope image as ``(kind, name, (H, W) uint8)``."""
    from pneumoscan.io import read_image

    out = list(generated(size)) + list(photographs())
    for kind, name, data in dicom_samples():
        out.append((kind, name, read_image(data, name=name, min_side=16)))
    return out
