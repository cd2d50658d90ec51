"""Synthetic image files for tests: PNG, JPEG and DICOM builders, shared by every test module.

Each format has a ``*_bytes(...)`` builder that returns the encoded file and a
``make_*(path, ...)`` wrapper that writes it and returns the path. Pixel
arrays are ``(H, W)`` (grayscale), ``(H, W, 3)`` (RGB) or ``(H, W, 4)`` (RGBA).
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate

#: Exif tag number of Orientation.
EXIF_ORIENTATION = 0x0112


def synthetic_xray(height: int = 256, width: int = 200, seed: int = 0) -> np.ndarray:
    """Return a deterministic ``(height, width) uint8`` film-like image: dark background, bright chest and spine."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    cy, cx = height / 2, width / 2
    chest = ((y - cy) / (0.42 * height)) ** 2 + ((x - cx) / (0.40 * width)) ** 2 < 1
    img = np.where(chest, 110.0, 15.0)
    img += 90.0 * np.exp(-(((x - cx) / (0.04 * width)) ** 2))  # spine
    img += rng.normal(0, 4, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def varied_film(seed: int) -> np.ndarray:
    """A :func:`synthetic_xray` of a random size (from ``seed``), gain and offset: films of one "site" that differ
    as a site's films do (the reference and the batches of the drift and adaptation tests share this generator)."""
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(120, 200)), int(rng.integers(100, 180))
    img = synthetic_xray(h, w, seed=seed).astype(np.float64) * rng.uniform(0.85, 1.15) + rng.uniform(-12, 12)
    return np.clip(img, 0, 255).astype(np.uint8)


def full_range_film(seed: int, h: int = 150, w: int = 120) -> np.ndarray:
    """A :func:`synthetic_xray` that spans 0..255, so that DICOM's min-max window leaves it unchanged."""
    img = synthetic_xray(h, w, seed=seed)
    img[0, 0], img[-1, -1] = 0, 255
    return img


def xray_jpeg(seed: int = 0, h: int = 300, w: int = 240) -> bytes:
    """A :func:`synthetic_xray` as JPEG bytes (an upload)."""
    return jpeg_bytes(synthetic_xray(h, w, seed=seed))


def _write(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.write_bytes(data)
    return path


def _exif(orientation: int | None) -> bytes:
    if orientation is None:
        return b""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return exif.tobytes()


def png_bytes(pixels: np.ndarray, *, mode: str | None = None, exif_orientation: int | None = None) -> bytes:
    """Encode ``pixels`` as PNG; ``mode`` converts first (e.g. ``"P"``, ``"LA"``). uint16 (H, W) gives a 16-bit PNG."""
    im = Image.fromarray(np.ascontiguousarray(pixels))
    if mode is not None and im.mode != mode:
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format="PNG", exif=_exif(exif_orientation))
    return buf.getvalue()


def palette_png_bytes(
    indices: np.ndarray, palette: list[tuple[int, int, int]], *, transparent_index: int | None = None
) -> bytes:
    """Encode a palette ("P") PNG from ``(H, W)`` palette indices and a list of RGB entries."""
    im = Image.frombytes("P", (indices.shape[1], indices.shape[0]), np.ascontiguousarray(indices, np.uint8).tobytes())
    im.putpalette([c for rgb in palette for c in rgb])
    buf = io.BytesIO()
    extra = {} if transparent_index is None else {"transparency": transparent_index}
    im.save(buf, format="PNG", **extra)
    return buf.getvalue()


def make_png(path: str | Path, pixels: np.ndarray, **kwargs: object) -> Path:
    """Write :func:`png_bytes` to ``path`` and return it."""
    return _write(path, png_bytes(pixels, **kwargs))  # type: ignore[arg-type]


def jpeg_bytes(
    pixels: np.ndarray, *, mode: str | None = None, quality: int = 95, exif_orientation: int | None = None
) -> bytes:
    """Encode ``pixels`` as JPEG; ``mode="CMYK"`` makes a CMYK JPEG."""
    im = Image.fromarray(np.ascontiguousarray(pixels))
    if mode is not None and im.mode != mode:
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality, exif=_exif(exif_orientation))
    return buf.getvalue()


def make_jpeg(path: str | Path, pixels: np.ndarray, **kwargs: object) -> Path:
    """Write :func:`jpeg_bytes` to ``path`` and return it."""
    return _write(path, jpeg_bytes(pixels, **kwargs))  # type: ignore[arg-type]


def png_header_bytes(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width x height`` 8-bit gray pixels but whose data are a few bytes (a "bomb")."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def dicom_bytes(
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    slope: float = 1.0,
    intercept: float = 0.0,
    window: tuple[float, float] | None = None,
    voi_lut: tuple[int, list[int]] | None = None,
    frames: int = 1,
    with_pixels: bool = True,
    bits: int = 16,
    bits_stored: int | None = None,
    signed: bool = False,
    compression: str | None = None,
    transfer_syntax: str | None = None,
) -> bytes:
    """Encode a single- or multi-frame DICOM Part 10 file (Digital X-Ray, For Presentation).

    Args:
        pixels: stored values, ``(H, W)`` or ``(H, W, 3)`` for ``photometric="RGB"``.
        slope, intercept: Rescale Slope/Intercept (written only when not 1 and 0).
        window: ``(center, width)`` written as Window Center/Width.
        voi_lut: ``(first_mapped_value, entries)`` written as a 16-bit VOI LUT Sequence item.
        frames: number of frames; the image is repeated.
        with_pixels: False leaves out Pixel Data (Rows/Columns are still written).
        bits: Bits Allocated (8 or 16); ``bits_stored`` defaults to it.
        compression: None, ``"rle"`` (RLE Lossless via pydicom) or ``"jpeg-baseline"``
            (an 8-bit grayscale JPEG from Pillow, encapsulated).
        transfer_syntax: declare this transfer syntax UID and store encapsulated garbage
            as pixel data (a file no decoder can read).
    """
    pixels = synthetic_xray() if pixels is None else np.asarray(pixels)
    stored = bits if bits_stored is None else bits_stored
    dtype = {(8, False): np.uint8, (8, True): np.int8, (16, False): np.uint16, (16, True): np.int16}[(bits, signed)]

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = uid.DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientID = "TEST-0001"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.SamplesPerPixel = 3 if pixels.ndim == 3 else 1
    if pixels.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, stored, stored - 1
    ds.PixelRepresentation = int(signed)
    if frames > 1:
        ds.NumberOfFrames = frames
    if slope != 1 or intercept != 0:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:
        item = Dataset()
        item.LUTDescriptor = [len(voi_lut[1]), voi_lut[0], 16]
        item["LUTDescriptor"].VR = "US"
        item.LUTData = np.asarray(voi_lut[1], dtype="<u2").tobytes()
        item["LUTData"].VR = "OW"
        ds.VOILUTSequence = [item]
    if with_pixels:
        data = np.stack([pixels] * frames) if frames > 1 else pixels
        ds.PixelData = np.ascontiguousarray(data.astype(dtype)).tobytes()
        ds["PixelData"].VR = "OB" if bits == 8 else "OW"
    if compression == "rle":
        ds.compress(uid.RLELossless, generate_instance_uid=False)
    elif compression == "jpeg-baseline":
        if bits != 8 or pixels.ndim != 2:
            raise ValueError("jpeg-baseline needs 8-bit grayscale pixels")
        ds.PixelData = encapsulate([jpeg_bytes(pixels.astype(np.uint8))])
        ds["PixelData"].VR = "OB"
        meta.TransferSyntaxUID = uid.JPEGBaseline8Bit
    elif compression is not None:
        raise ValueError(f"unknown compression {compression!r}")
    if transfer_syntax is not None:
        ds.PixelData = encapsulate([b"\x00\x01\x02\x03" * 16])
        ds["PixelData"].VR = "OB"
        meta.TransferSyntaxUID = uid.UID(transfer_syntax)
    buf = io.BytesIO()
    # A private or unknown transfer syntax does not tell pydicom how to encode the data set.
    encoding = {"implicit_vr": False, "little_endian": True} if transfer_syntax is not None else {}
    ds.save_as(buf, enforce_file_format=True, **encoding)
    return buf.getvalue()


def make_dicom(path: str | Path, pixels: np.ndarray | None = None, **kwargs: object) -> Path:
    """Write :func:`dicom_bytes` to ``path`` and return it."""
    return _write(path, dicom_bytes(pixels, **kwargs))  # type: ignore[arg-type]


def deflated_dicom_bytes(pixels: np.ndarray | None = None, **kwargs: object) -> bytes:
    """:func:`dicom_bytes` re-encoded as Deflated Explicit VR Little Endian (a legitimate deflated file)."""
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(pixels, **kwargs)))  # type: ignore[arg-type]
    ds.file_meta.TransferSyntaxUID = uid.DeflatedExplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def deflate_bomb_bytes(inflated: int = 1 << 30, *, rows: int = 2048, columns: int = 2048,
                       sop_instance_uid: str | None = None) -> bytes:
    """A DICOM Part 10 file in Deflated Explicit VR Little Endian whose data set inflates to about ``inflated``
    bytes: a small DX header (``rows`` x ``columns``, 16-bit) and a Pixel Data element of ``inflated`` zero bytes,
    whatever the header says. About a thousandth of ``inflated`` on disk; made without holding it in memory."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = uid.DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = sop_instance_uid or uid.generate_uid()
    meta.TransferSyntaxUID = uid.DeflatedExplicitVRLittleEndian
    ds = Dataset()
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = "DX", "BOMB-0001"
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, columns, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    length = inflated - len(body.getvalue()) - 12
    length -= length % 2
    zipper = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    flush = zlib.Z_FULL_FLUSH  # resets the compressor: every 16 MiB of zeros after it compresses to the same bytes
    parts = [zipper.compress(body.getvalue() + b"\xe0\x7f\x10\x00OW\x00\x00" + struct.pack("<I", length))
             + zipper.flush(flush)]
    zeros = bytes(1 << 24)
    whole, rest = divmod(length, len(zeros))
    if whole:
        parts += [zipper.compress(zeros) + zipper.flush(flush)] * whole
    parts.append(zipper.compress(zeros[:rest]) + zipper.flush())
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    head.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(head, meta, enforce_standard=True)
    return head.getvalue() + b"".join(parts)
