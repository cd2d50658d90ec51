"""Seed files and mutations for fuzzing the image decoders (``pneumoscan.io``).

Shared by ``tests/test_fuzz.py`` (a few hundred derandomized Hypothesis cases in CI) and
``benchmarks/fuzz_decode.py`` (thousands of seeded cases, outcome counts, reproducers).

A case is fully described by ``(seed name, mutation names, rng seed)``: :func:`make_case` rebuilds its bytes,
so a failure reported by either tool reproduces with one call::

    from fuzzing import make_case, check_case
    check_case(make_case("dcm_implicit16", ["dicom_junk_vr", "truncate"], 1234), "case.dcm")

Mutations are plain functions ``(data: bytes, rng: random.Random) -> bytes``. Generic ones (bit flips,
random runs, truncation, insertion, deletion, duplicated chunks) apply to every format; structure-aware ones
parse just enough of the file (DICOM elements, PNG chunks, JPEG markers, TIFF IFD entries, BMP header fields)
to damage a chosen field. A structure-aware mutation that finds nothing to damage (an earlier mutation broke
the structure) falls back to a bit flip, so every mutation changes the file.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from imagefactory import dicom_bytes, jpeg_bytes, palette_png_bytes, png_bytes, synthetic_xray
from pneumoscan.io import ImageError, ImageInfo, read_image, read_image_info

#: Pixel limit used while fuzzing: low, so header "bombs" are refused before any decoding.
MAX_PIXELS = 4_000_000

Mutation = Callable[[bytes, random.Random], bytes]


# --------------------------------------------------------------------------- seed files (all decode cleanly)


def _gray(h: int, w: int, seed: int) -> np.ndarray:
    return synthetic_xray(h, w, seed=seed)


def _gray16(h: int, w: int, seed: int, bits: int = 12) -> np.ndarray:
    return (_gray(h, w, seed).astype(np.uint16) << (bits - 8)) | np.uint16(seed % 7)


def _pil_bytes(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _implicit_vr(data: bytes) -> bytes:
    """Re-encode a DICOM file as Implicit VR Little Endian."""
    import pydicom
    from pydicom import uid

    ds = pydicom.dcmread(io.BytesIO(data))
    ds.file_meta.TransferSyntaxUID = uid.ImplicitVRLittleEndian
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


#: Seed name -> (format family, builder). Sides 64..96 px: io refuses sides under 64, and small is fast.
_SEED_BUILDERS: dict[str, tuple[str, Callable[[], bytes]]] = {
    "jpeg_gray": ("JPEG", lambda: jpeg_bytes(_gray(72, 88, 1), quality=90)),
    "jpeg_rgb_exif": ("JPEG", lambda: jpeg_bytes(np.stack([_gray(80, 64, 2)] * 3, axis=-1), exif_orientation=6)),
    "jpeg_progressive": ("JPEG", lambda: _pil_bytes(Image.fromarray(_gray(64, 96, 3)), "JPEG", progressive=True)),
    "png_gray": ("PNG", lambda: png_bytes(_gray(70, 90, 4))),
    "png_16bit": ("PNG", lambda: png_bytes(_gray16(88, 64, 5))),
    "png_palette": ("PNG", lambda: palette_png_bytes(
        _gray(64, 72, 6) // 64, [(0, 0, 0), (80, 80, 80), (160, 160, 160), (250, 250, 250)], transparent_index=0)),
    "tiff_raw": ("TIFF", lambda: _pil_bytes(Image.fromarray(_gray(66, 80, 7)), "TIFF")),
    "tiff_lzw_16bit": ("TIFF", lambda: _pil_bytes(Image.fromarray(_gray16(72, 64, 8)), "TIFF",
                                                   compression="tiff_lzw")),
    "bmp_gray": ("BMP", lambda: _pil_bytes(Image.fromarray(_gray(64, 76, 9)), "BMP")),
    "bmp_rgb": ("BMP", lambda: _pil_bytes(Image.fromarray(np.stack([_gray(68, 64, 10)] * 3, axis=-1)), "BMP")),
    "dcm_explicit16": ("DICOM", lambda: dicom_bytes(_gray16(80, 72, 11), bits=16, bits_stored=12,
                                                    window=(1500.0, 3000.0))),
    "dcm_explicit8_mono1": ("DICOM", lambda: dicom_bytes(_gray(72, 64, 12), bits=8, photometric="MONOCHROME1")),
    "dcm_implicit16": ("DICOM", lambda: _implicit_vr(dicom_bytes(_gray16(64, 80, 13), bits=16, slope=2.0,
                                                                 intercept=-1024.0))),
    "dcm_implicit8_mono1": ("DICOM", lambda: _implicit_vr(dicom_bytes(_gray(76, 64, 14), bits=8,
                                                                      photometric="MONOCHROME1"))),
    "dcm_rle16_mono1": ("DICOM", lambda: dicom_bytes(_gray16(64, 72, 15), bits=16, compression="rle",
                                                     photometric="MONOCHROME1")),
    "dcm_jpeg_baseline8": ("DICOM", lambda: dicom_bytes(_gray(72, 72, 16), bits=8, compression="jpeg-baseline")),
}

#: Seed names in a fixed order (Hypothesis and the benchmark depend on it for determinism).
SEED_NAMES: tuple[str, ...] = tuple(_SEED_BUILDERS)
#: Seed name -> format family ("JPEG", "PNG", "TIFF", "BMP" or "DICOM").
SEED_FORMATS: dict[str, str] = {name: fmt for name, (fmt, _) in _SEED_BUILDERS.items()}
FORMATS: tuple[str, ...] = ("JPEG", "PNG", "TIFF", "BMP", "DICOM")


@lru_cache(maxsize=None)
def seed_bytes(name: str) -> bytes:
    """The unmutated seed file ``name`` (built once per process)."""
    return _SEED_BUILDERS[name][1]()


# --------------------------------------------------------------------------- helpers


def _offset(rng: random.Random, n: int, data: bytes = b"") -> int:
    """A random offset in ``[0, n)``; half the time inside the header, where parsers look.

    The header is the first 512 bytes, or for DICOM the 640 bytes from the "DICM" marker on (the 128-byte
    preamble before it is ignored by readers, so mutating it teaches nothing).
    """
    if n <= 1:
        return 0
    if rng.random() < 0.5:
        start = 128 if data[128:132] == b"DICM" else 0
        return rng.randrange(min(start, n - 1), min(n, start + 640 if start else 512))
    return rng.randrange(n)


def _junk(rng: random.Random, n: int) -> bytes:
    kind = rng.random()
    if kind < 0.15:
        return b"\x00" * n
    if kind < 0.3:
        return b"\xff" * n
    return rng.randbytes(n)


def _u16_edge(rng: random.Random, current: int | None = None) -> int:
    values = [0, 1, 2, 7, 8, 12, 15, 16, 17, 31, 32, 63, 64, 255, 256, 4096, 32767, 32768, 65534, 65535]
    if current is not None:
        values += [max(current - 1, 0), min(current + 1, 0xFFFF), min(current * 2, 0xFFFF)]
    return rng.choice(values) if rng.random() < 0.8 else rng.randrange(0x10000)


def _u32_edge(rng: random.Random, current: int | None = None, size: int | None = None) -> int:
    values = [0, 1, 2, 3, 7, 8, 0x7FFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF]
    if current is not None:
        values += [max(current - 1, 0), min(current + 1, 0xFFFFFFFF), min(current * 2, 0xFFFFFFFF),
                   current ^ 1, max(current // 2, 0)]
    if size is not None:
        values += [size, max(size - 1, 0), size + 1, size * 4]
    return rng.choice(values) if rng.random() < 0.8 else rng.getrandbits(32)


def _fallback(data: bytes, rng: random.Random) -> bytes:
    return flip(data, rng)


# --------------------------------------------------------------------------- generic mutations


def flip(data: bytes, rng: random.Random) -> bytes:
    """Flip 1..8 bits or bytes at random offsets."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        i = _offset(rng, len(out), out)
        out[i] ^= (1 << rng.randrange(8)) if rng.random() < 0.6 else rng.randrange(1, 256)
    return bytes(out)


def overwrite(data: bytes, rng: random.Random) -> bytes:
    """Overwrite a run of 1..64 bytes with random bytes (or zeros, or 0xFF)."""
    i = _offset(rng, len(data), data)
    n = rng.randint(1, 64)
    return data[:i] + _junk(rng, n) + data[i + n:]


def truncate(data: bytes, rng: random.Random) -> bytes:
    """Cut the file at a random point (keeping at least one byte)."""
    return data[: max(1, _offset(rng, len(data), data))]


def insert(data: bytes, rng: random.Random) -> bytes:
    """Insert 1..64 random bytes at a random offset."""
    i = _offset(rng, len(data) + 1, data)
    return data[:i] + _junk(rng, rng.randint(1, 64)) + data[i:]


def delete(data: bytes, rng: random.Random) -> bytes:
    """Delete 1..64 bytes at a random offset."""
    i = _offset(rng, len(data), data)
    return data[:i] + data[i + rng.randint(1, 64):]


def duplicate(data: bytes, rng: random.Random) -> bytes:
    """Copy a chunk of 1..256 bytes and insert it elsewhere (often right after itself)."""
    i = _offset(rng, len(data), data)
    chunk = data[i:i + rng.randint(1, 256)]
    j = i + len(chunk) if rng.random() < 0.5 else _offset(rng, len(data) + 1, data)
    return data[:j] + chunk + data[j:]


# --------------------------------------------------------------------------- DICOM


_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_IMPLICIT_TS = b"1.2.840.10008.1.2"
TAG_ROWS, TAG_COLUMNS = (0x0028, 0x0010), (0x0028, 0x0011)
TAG_TRANSFER_SYNTAX = (0x0002, 0x0010)
TAG_PIXEL_DATA = (0x7FE0, 0x0010)
_UID_TAGS = {(0x0002, 0x0002), (0x0002, 0x0003), (0x0002, 0x0010), (0x0002, 0x0012), (0x0008, 0x0016),
             (0x0008, 0x0018)}
_OTHER_UIDS = [b"1.2.840.10008.1.2", b"1.2.840.10008.1.2.1", b"1.2.840.10008.1.2.5", b"1.2.840.10008.1.2.4.50",
               b"1.2.840.10008.1.2.2", b"1.2.3.4.5.6.7.8.9", b"", b"not-a-uid"]


@dataclass(frozen=True)
class DicomElement:
    """Where one top-level element of a DICOM Part 10 file lies."""

    tag: tuple[int, int]
    offset: int                 # first byte of the tag
    vr: bytes | None            # None: implicit VR
    len_offset: int
    len_size: int               # 2 or 4
    value_offset: int
    length: int                 # 0xFFFFFFFF: undefined

    @property
    def end(self) -> int | None:
        return None if self.length == 0xFFFFFFFF else self.value_offset + self.length


def dicom_elements(data: bytes) -> list[DicomElement]:
    """Top-level elements of a Part 10 file, in order, up to the first undefined-length one or damage."""
    if data[128:132] != b"DICM":
        return []
    out: list[DicomElement] = []
    pos, implicit = 132, False
    while pos + 8 <= len(data):
        group, elem = struct.unpack_from("<HH", data, pos)
        if group != 2 and out and out[-1].tag[0] == 2:  # leaving the file meta group: which VR encoding?
            ts = next((data[e.value_offset:e.end] for e in out if e.tag == TAG_TRANSFER_SYNTAX and e.end), b"")
            implicit = ts.rstrip(b"\x00 ") == _IMPLICIT_TS
        if implicit and group != 2:
            vr, len_offset, len_size = None, pos + 4, 4
        else:
            vr = bytes(data[pos + 4:pos + 6])
            len_offset, len_size = (pos + 8, 4) if vr in _LONG_VRS else (pos + 6, 2)
        if len_offset + len_size > len(data):
            break
        length = int.from_bytes(data[len_offset:len_offset + len_size], "little")
        el = DicomElement((group, elem), pos, vr, len_offset, len_size, len_offset + len_size, length)
        out.append(el)
        if el.end is None or el.end > len(data):
            break
        pos = el.end
    return out


def _find(elements: list[DicomElement], tag: tuple[int, int]) -> DicomElement | None:
    return next((e for e in elements if e.tag == tag), None)


def _fix_group2_length(data: bytes, delta: int) -> bytes:
    """Add ``delta`` to (0002,0000) File Meta Information Group Length, when present."""
    el = _find(dicom_elements(data), (0x0002, 0x0000))
    if el is None or el.length != 4:
        return data
    value = (int.from_bytes(data[el.value_offset:el.value_offset + 4], "little") + delta) & 0xFFFFFFFF
    return data[:el.value_offset] + value.to_bytes(4, "little") + data[el.value_offset + 4:]


def _replace_value(data: bytes, el: DicomElement, value: bytes, rng: random.Random, pad: bytes = b"\x00") -> bytes:
    """Give ``el`` a new value (and matching length); in group 2, usually fix the group length too."""
    if el.end is None:
        return data
    if len(value) % 2 and rng.random() < 0.8:
        value += pad
    if len(value) >= 1 << (8 * el.len_size):
        value = value[: (1 << (8 * el.len_size)) - 2]
    out = (data[:el.len_offset] + len(value).to_bytes(el.len_size, "little") + value + data[el.end:])
    if el.tag[0] == 2 and el.tag != (0x0002, 0x0000) and rng.random() < 0.8:
        out = _fix_group2_length(out, len(value) - el.length)
    return out


def _junk_vr(rng: random.Random) -> bytes:
    return rng.choice([
        b"ZZ", b"\x00\x00", b"\xff\xff", b"us", b"  ", b"XX", b"OB", b"SQ", b"UN", b"UT", b"OW", b"FD", b"AT",
        bytes([rng.randrange(65, 91), rng.randrange(65, 91)]), rng.randbytes(2),
    ])


def dicom_junk_vr(data: bytes, rng: random.Random) -> bytes:
    """Overwrite the VR of a random explicit-VR element with junk (or with a VR of the other length class)."""
    els = [e for e in dicom_elements(data) if e.vr is not None]
    if not els:
        return _fallback(data, rng)
    el = rng.choice(els)
    return data[:el.offset + 4] + _junk_vr(rng) + data[el.offset + 6:]


def dicom_rows_junk_vr(data: bytes, rng: random.Random) -> bytes:
    """Damage Rows or Columns (0028,0010/0011): junk VR when explicit, a junk length when implicit."""
    els = dicom_elements(data)
    el = _find(els, rng.choice([TAG_ROWS, TAG_COLUMNS]))
    if el is None:
        return _fallback(data, rng)
    if el.vr is not None and rng.random() < 0.8:
        return data[:el.offset + 4] + _junk_vr(rng) + data[el.offset + 6:]
    new_len = _u32_edge(rng, el.length) & ((1 << (8 * el.len_size)) - 1)
    return data[:el.len_offset] + new_len.to_bytes(el.len_size, "little") + data[el.value_offset:]


def dicom_length(data: bytes, rng: random.Random) -> bytes:
    """Give a random element (often Pixel Data) a huge, odd, undefined, zero or off-by-some length."""
    els = dicom_elements(data)
    if not els:
        return _fallback(data, rng)
    pixel = _find(els, TAG_PIXEL_DATA)
    el = pixel if pixel is not None and rng.random() < 0.3 else rng.choice(els)
    if el.len_size == 2:
        new_len = _u16_edge(rng, el.length) if rng.random() < 0.7 else (el.length | 1)
    else:
        new_len = _u32_edge(rng, el.length, len(data) - el.value_offset)
    return data[:el.len_offset] + new_len.to_bytes(el.len_size, "little") + data[el.value_offset:]


def dicom_multi_uid(data: bytes, rng: random.Random) -> bytes:
    """Give a UID element (often the Transfer Syntax UID) two or more values, or an odd/empty/junk value."""
    els = [e for e in dicom_elements(data) if e.tag in _UID_TAGS and e.end is not None]
    if not els:
        return _fallback(data, rng)
    ts = _find(els, TAG_TRANSFER_SYNTAX)
    el = ts if ts is not None and rng.random() < 0.5 else rng.choice(els)
    current = data[el.value_offset:el.end].rstrip(b"\x00 ")
    choice = rng.random()
    if choice < 0.6:
        values = [current] + rng.sample(_OTHER_UIDS, rng.randint(1, 3))
        rng.shuffle(values)
        value = b"\\".join(values)
    elif choice < 0.8:
        value = rng.choice(_OTHER_UIDS)
    else:
        value = current + b"." + rng.randbytes(rng.randint(1, 9))
    return _replace_value(data, el, value, rng)


_US_TAGS = {(0x0028, 0x0002), (0x0028, 0x0010), (0x0028, 0x0011), (0x0028, 0x0100), (0x0028, 0x0101),
            (0x0028, 0x0102), (0x0028, 0x0103), (0x0028, 0x0006)}
_DS_TAGS = {(0x0028, 0x1050), (0x0028, 0x1051), (0x0028, 0x1052), (0x0028, 0x1053), (0x0028, 0x0008)}
_PHOTOMETRIC = (0x0028, 0x0004)
_DS_JUNK = [b"0", b"-0", b"NaN", b"inf", b"-inf", b"1e309", b"abc", b"1\\2\\3", b"", b" ", b"9" * 16,
            b"-99999999", b"1.5e-320", b"\x00\x01"]
_PHOTOMETRIC_JUNK = [b"MONOCHROME1", b"MONOCHROME2", b"RGB", b"YBR_FULL", b"YBR_FULL_422", b"PALETTE COLOR",
                     b"ZZZ", b"", b"monochrome2", b"MONOCHROME1\\MONOCHROME2"]


def dicom_value(data: bytes, rng: random.Random) -> bytes:
    """Junk value in an image-describing element: Rows, Columns, bits, samples, photometric, window, rescale."""
    els = [e for e in dicom_elements(data) if e.tag in _US_TAGS | _DS_TAGS | {_PHOTOMETRIC} and e.end is not None]
    if not els:
        return _fallback(data, rng)
    el = rng.choice(els)
    if el.tag in _US_TAGS and el.length == 2 and rng.random() < 0.85:
        current = int.from_bytes(data[el.value_offset:el.value_offset + 2], "little")
        return data[:el.value_offset] + _u16_edge(rng, current).to_bytes(2, "little") + data[el.end:]
    if el.tag == _PHOTOMETRIC:
        return _replace_value(data, el, rng.choice(_PHOTOMETRIC_JUNK), rng, pad=b" ")
    if el.tag in _DS_TAGS:
        return _replace_value(data, el, rng.choice(_DS_JUNK), rng, pad=b" ")
    return _replace_value(data, el, rng.randbytes(rng.choice([0, 1, 3, 4, 6])), rng)


def dicom_drop_element(data: bytes, rng: random.Random) -> bytes:
    """Remove one whole element (Rows, the Transfer Syntax UID, the group length...)."""
    els = [e for e in dicom_elements(data) if e.end is not None]
    if not els:
        return _fallback(data, rng)
    el = rng.choice(els)
    out = data[:el.offset] + data[el.end:]
    if el.tag[0] == 2 and el.tag != (0x0002, 0x0000) and rng.random() < 0.8:
        out = _fix_group2_length(out, -(el.end - el.offset))
    return out


def dicom_encapsulation(data: bytes, rng: random.Random) -> bytes:
    """Damage encapsulated Pixel Data: an item's tag or length, or the sequence delimiter."""
    pixel = _find(dicom_elements(data), TAG_PIXEL_DATA)
    if pixel is None or pixel.length != 0xFFFFFFFF:
        return dicom_length(data, rng)
    starts = [i for i in range(pixel.value_offset, len(data) - 3, 2)
              if data[i:i + 4] in (b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0")]
    if not starts:
        return _fallback(data, rng)
    i = rng.choice(starts)
    choice = rng.random()
    if choice < 0.5 and i + 8 <= len(data):  # item length
        current = int.from_bytes(data[i + 4:i + 8], "little")
        return data[:i + 4] + _u32_edge(rng, current, len(data) - i - 8).to_bytes(4, "little") + data[i + 8:]
    if choice < 0.8:  # item tag
        return data[:i] + rng.choice([b"\xfe\xff\x0d\xe0", b"\xfe\xff\xdd\xe0", b"\x00\x00\x00\x00",
                                      rng.randbytes(4)]) + data[i + 4:]
    return data[:i] + data[i + 8:]  # drop the item header


# --------------------------------------------------------------------------- PNG


@dataclass(frozen=True)
class PngChunk:
    offset: int   # first byte of the length field
    length: int
    kind: bytes

    @property
    def end(self) -> int:
        return self.offset + 12 + self.length


def png_chunks(data: bytes) -> list[PngChunk]:
    """The chunks of a PNG, in order, up to the first one that runs past the end."""
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        return []
    out, pos = [], 8
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        chunk = PngChunk(pos, length, bytes(data[pos + 4:pos + 8]))
        if chunk.end > len(data):
            break
        out.append(chunk)
        pos = chunk.end
    return out


def _png_chunk(kind: bytes, body: bytes, rng: random.Random | None = None) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    if rng is not None and rng.random() < 0.15:
        crc ^= 1 << rng.randrange(32)
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def _png_rewrite(data: bytes, chunk: PngChunk, body: bytes, rng: random.Random | None) -> bytes:
    """Replace a chunk's body, with a correct CRC (always without ``rng``, else usually)."""
    return data[:chunk.offset] + _png_chunk(chunk.kind, body, rng) + data[chunk.end:]


def png_chunk_length(data: bytes, rng: random.Random) -> bytes:
    """Give a chunk a wrong length (huge, zero, off by some)."""
    chunks = png_chunks(data)
    if not chunks:
        return _fallback(data, rng)
    c = rng.choice(chunks)
    return data[:c.offset] + _u32_edge(rng, c.length, len(data)).to_bytes(4, "big") + data[c.offset + 4:]


def png_bad_crc(data: bytes, rng: random.Random) -> bytes:
    """Break one chunk's CRC."""
    chunks = png_chunks(data)
    if not chunks:
        return _fallback(data, rng)
    c = rng.choice(chunks)
    i = c.end - 4 + rng.randrange(4)
    return data[:i] + bytes([data[i] ^ rng.randrange(1, 256)]) + data[i + 1:]


def png_huge_ihdr(data: bytes, rng: random.Random) -> bytes:
    """IHDR width/height set to huge, zero or odd values, with a valid CRC (so only the size guard stops it)."""
    chunks = png_chunks(data)
    ihdr = next((c for c in chunks if c.kind == b"IHDR" and c.length == 13), None)
    if ihdr is None:
        return _fallback(data, rng)
    body = bytearray(data[ihdr.offset + 8:ihdr.offset + 21])
    sizes = [0, 1, 63, 64, 2000, 2001, 65535, 100_000, 1 << 20, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
    which = rng.randrange(3)
    for k in (0, 1):
        if which in (k, 2):
            body[4 * k:4 * k + 4] = rng.choice(sizes).to_bytes(4, "big")
    return _png_rewrite(data, ihdr, bytes(body), rng)


def png_ihdr_fields(data: bytes, rng: random.Random) -> bytes:
    """Junk bit depth, colour type, compression, filter or interlace method in IHDR, with a valid CRC."""
    ihdr = next((c for c in png_chunks(data) if c.kind == b"IHDR" and c.length == 13), None)
    if ihdr is None:
        return _fallback(data, rng)
    body = bytearray(data[ihdr.offset + 8:ihdr.offset + 21])
    k = rng.randrange(8, 13)
    body[k] = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 32, 255]) if rng.random() < 0.8 else rng.randrange(256)
    return _png_rewrite(data, ihdr, bytes(body), rng)


def png_chunk_body(data: bytes, rng: random.Random) -> bytes:
    """Damage the body of a chunk (IDAT: zlib garbage; PLTE/tRNS/eXIf: odd sizes) behind a valid CRC."""
    chunks = [c for c in png_chunks(data) if c.kind != b"IEND"]
    if not chunks:
        return _fallback(data, rng)
    c = rng.choice(chunks)
    body = data[c.offset + 8:c.offset + 8 + c.length]
    body = rng.choice([flip, overwrite, truncate, insert, delete])(body, rng) if body else _junk(rng, 8)
    return _png_rewrite(data, c, body, rng)


def png_drop_or_duplicate_chunk(data: bytes, rng: random.Random) -> bytes:
    """Remove a chunk (IHDR, IDAT, IEND...) or repeat one."""
    chunks = png_chunks(data)
    if not chunks:
        return _fallback(data, rng)
    c = rng.choice(chunks)
    if rng.random() < 0.5:
        return data[:c.offset] + data[c.end:]
    return data[:c.end] + data[c.offset:c.end] + data[c.end:]


# --------------------------------------------------------------------------- JPEG


@dataclass(frozen=True)
class JpegSegment:
    offset: int   # the 0xFF of the marker
    marker: int
    length: int   # 0 for standalone markers

    @property
    def end(self) -> int:
        return self.offset + 2 + self.length


_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_segments(data: bytes) -> list[JpegSegment]:
    """SOI, the marker segments up to and including SOS, then EOI when present."""
    if not data.startswith(b"\xff\xd8"):
        return []
    out, pos = [JpegSegment(0, 0xD8, 0)], 2
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        seg = JpegSegment(pos, marker, length)
        if seg.end > len(data):
            break
        out.append(seg)
        if marker == 0xDA:
            eoi = data.rfind(b"\xff\xd9")
            if eoi >= seg.end:
                out.append(JpegSegment(eoi, 0xD9, 0))
            break
        pos = seg.end
    return out


def jpeg_sof_dims(data: bytes, rng: random.Random) -> bytes:
    """Frame header (SOF) height/width set to zero, huge or odd values."""
    sof = next((s for s in jpeg_segments(data) if s.marker in _SOF_MARKERS and s.length >= 8), None)
    if sof is None:
        return _fallback(data, rng)
    out = bytearray(data)
    which = rng.randrange(3)
    for k in (0, 1):  # height at +5, width at +7
        if which in (k, 2):
            i = sof.offset + 5 + 2 * k
            out[i:i + 2] = _u16_edge(rng, int.from_bytes(data[i:i + 2], "big")).to_bytes(2, "big")
    return bytes(out)


def jpeg_sof_fields(data: bytes, rng: random.Random) -> bytes:
    """Junk precision, component count, sampling factors or quantisation table ids in the SOF; or swap its type."""
    sof = next((s for s in jpeg_segments(data) if s.marker in _SOF_MARKERS and s.length >= 8), None)
    if sof is None:
        return _fallback(data, rng)
    out = bytearray(data)
    choice = rng.random()
    if choice < 0.2:
        out[sof.offset + 1] = rng.choice(sorted(_SOF_MARKERS))
    elif choice < 0.4:
        out[sof.offset + 4] = rng.choice([0, 1, 2, 7, 12, 16, 255])
    elif choice < 0.6:
        out[sof.offset + 9] = rng.choice([0, 1, 2, 3, 4, 5, 255])
    else:
        i = rng.randrange(sof.offset + 10, min(sof.end, len(out)))
        out[i] = rng.choice([0, 0x11, 0x22, 0x44, 0x0F, 0xF0, 0xFF, 3, 4]) if rng.random() < 0.7 else rng.randrange(256)
    return bytes(out)


def jpeg_drop_marker(data: bytes, rng: random.Random) -> bytes:
    """Remove one marker segment (DQT, DHT, SOF, SOS, APPn...) or the EOI marker."""
    segs = jpeg_segments(data)
    if len(segs) < 2:
        return _fallback(data, rng)
    s = rng.choice(segs[1:])
    return data[:s.offset] + data[s.end:]


def jpeg_segment_length(data: bytes, rng: random.Random) -> bytes:
    """Give a marker segment a wrong length (0, 1, 2, huge, off by one)."""
    segs = [s for s in jpeg_segments(data) if s.length]
    if not segs:
        return _fallback(data, rng)
    s = rng.choice(segs)
    new = rng.choice([0, 1, 2, 3, s.length - 1, s.length + 1, s.length * 2, 0xFFFF, rng.randrange(0x10000)])
    return data[:s.offset + 2] + (new & 0xFFFF).to_bytes(2, "big") + data[s.offset + 4:]


def jpeg_table_junk(data: bytes, rng: random.Random) -> bytes:
    """Damage a Huffman or quantisation table, or the scan header (component selectors, spectral selection)."""
    segs = [s for s in jpeg_segments(data) if s.marker in (0xC4, 0xDB, 0xDA, 0xDD) and s.length > 2]
    if not segs:
        return _fallback(data, rng)
    s = rng.choice(segs)
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(s.offset + 4, min(s.end, len(out)))
        out[i] = rng.choice([0, 1, 0x10, 0x11, 0x3F, 0xFF]) if rng.random() < 0.5 else rng.randrange(256)
    return bytes(out)


def jpeg_scan_markers(data: bytes, rng: random.Random) -> bytes:
    """Put markers inside the entropy-coded data (RSTn, an early EOI, SOS, stuffed FF00 removed...)."""
    segs = jpeg_segments(data)
    sos = next((s for s in segs if s.marker == 0xDA), None)
    if sos is None or sos.end >= len(data) - 2:
        return _fallback(data, rng)
    i = rng.randrange(sos.end, len(data) - 2)
    marker = bytes([0xFF, rng.choice([0xD0, 0xD3, 0xD7, 0xD9, 0xDA, 0xC4, 0xDD, 0x00, 0xFF, 0xD8, 0xE1])])
    if rng.random() < 0.7:
        return data[:i] + marker + data[i:]
    return data[:i] + marker + data[i + 2:]


# --------------------------------------------------------------------------- TIFF


@dataclass(frozen=True)
class TiffEntry:
    offset: int   # first byte of the 12-byte entry
    tag: int
    type: int
    count: int


def tiff_ifd(data: bytes) -> tuple[str, int, list[TiffEntry]] | None:
    """``(byte order, first IFD offset, its entries)`` of a classic TIFF, or None."""
    if data[:4] == b"II*\x00":
        order = "<"
    elif data[:4] == b"MM\x00*":
        order = ">"
    else:
        return None
    if len(data) < 8:
        return None
    ifd = struct.unpack_from(order + "I", data, 4)[0]
    if ifd + 2 > len(data):
        return order, ifd, []
    n = struct.unpack_from(order + "H", data, ifd)[0]
    entries = []
    for k in range(n):
        pos = ifd + 2 + 12 * k
        if pos + 12 > len(data):
            break
        tag, typ, count = struct.unpack_from(order + "HHI", data, pos)
        entries.append(TiffEntry(pos, tag, typ, count))
    return order, ifd, entries


def tiff_ifd_offset(data: bytes, rng: random.Random) -> bytes:
    """First IFD offset set to 0, into the header, odd, past the end, huge; or the next-IFD link made a loop."""
    parsed = tiff_ifd(data)
    if parsed is None:
        return _fallback(data, rng)
    order, ifd, entries = parsed
    if entries and rng.random() < 0.35:  # next-IFD offset after the last entry
        pos = ifd + 2 + 12 * len(entries)
        if pos + 4 <= len(data):
            new = rng.choice([ifd, 8, 0, 4, pos, len(data), 0xFFFFFFFF, ifd + 1])
            return data[:pos] + struct.pack(order + "I", new) + data[pos + 4:]
    new = _u32_edge(rng, ifd, len(data)) if rng.random() < 0.6 else rng.choice([0, 4, 6, ifd + 1, ifd - 2,
                                                                               len(data) - 2, len(data) - 1])
    return data[:4] + struct.pack(order + "I", new & 0xFFFFFFFF) + data[8:]


def tiff_entry_count(data: bytes, rng: random.Random) -> bytes:
    """IFD entry count set to 0, 1, huge or off by some."""
    parsed = tiff_ifd(data)
    if parsed is None or parsed[1] + 2 > len(data):
        return _fallback(data, rng)
    order, ifd, entries = parsed
    new = rng.choice([0, 1, len(entries) - 1, len(entries) + 1, len(entries) * 2, 0xFFFF, rng.randrange(0x10000)])
    return data[:ifd] + struct.pack(order + "H", new & 0xFFFF) + data[ifd + 2:]


_TIFF_VALUES = {
    256: [0, 1, 63, 64, 65535, 100_000, 0xFFFFFFFF],          # ImageWidth
    257: [0, 1, 63, 64, 65535, 100_000, 0xFFFFFFFF],          # ImageLength
    258: [0, 1, 2, 3, 4, 7, 12, 16, 24, 32, 64, 255],         # BitsPerSample
    259: [0, 1, 2, 3, 4, 5, 6, 7, 8, 32773, 34712, 65535],    # Compression
    262: [0, 1, 2, 3, 4, 5, 6, 8, 32844, 65535],              # PhotometricInterpretation
    273: [0, 1, 8, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF],           # StripOffsets
    274: [0, 1, 5, 6, 8, 9, 65535],                            # Orientation
    277: [0, 1, 2, 3, 4, 255, 65535],                         # SamplesPerPixel
    278: [0, 1, 2, 0xFFFF, 0xFFFFFFFF],                       # RowsPerStrip
    279: [0, 1, 2, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF],           # StripByteCounts
    284: [0, 1, 2, 3, 65535],                                 # PlanarConfiguration
    317: [0, 1, 2, 3, 65535],                                 # Predictor
    339: [0, 1, 2, 3, 4, 65535],                              # SampleFormat
}


def tiff_entry_fields(data: bytes, rng: random.Random) -> bytes:
    """Damage one IFD entry: a junk type, a huge count, a value/offset pointing anywhere."""
    parsed = tiff_ifd(data)
    if parsed is None or not parsed[2]:
        return _fallback(data, rng)
    order, _, entries = parsed
    e = rng.choice(entries)
    choice = rng.random()
    if choice < 0.25:
        return (data[:e.offset + 2] + struct.pack(order + "H", rng.choice([0, 1, 2, 3, 4, 5, 7, 11, 12, 13, 16, 17,
                                                                          99, 65535])) + data[e.offset + 4:])
    if choice < 0.55:
        return data[:e.offset + 4] + struct.pack(order + "I", _u32_edge(rng, e.count, len(data))) + data[e.offset + 8:]
    return data[:e.offset + 8] + struct.pack(order + "I", _u32_edge(rng, None, len(data))) + data[e.offset + 12:]


def tiff_tag_value(data: bytes, rng: random.Random) -> bytes:
    """Set an image-describing tag (size, bits, compression, photometric, strips...) to an edge value."""
    parsed = tiff_ifd(data)
    if parsed is None:
        return _fallback(data, rng)
    order, _, entries = parsed
    targets = [e for e in entries if e.tag in _TIFF_VALUES and e.count == 1 and e.type in (3, 4)]
    if not targets:
        return _fallback(data, rng)
    e = rng.choice(targets)
    value = rng.choice(_TIFF_VALUES[e.tag])
    packed = struct.pack(order + "H", value & 0xFFFF) + b"\x00\x00" if e.type == 3 else struct.pack(order + "I", value)
    return data[:e.offset + 8] + packed + data[e.offset + 12:]


# --------------------------------------------------------------------------- BMP


_BMP_FIELDS = {  # offset -> (size, signed, edge values)
    2: (4, False, [0, 1, 14, 54, 0xFFFFFFFF]),                                      # file size
    10: (4, False, [0, 1, 14, 53, 54, 1078, 0x7FFFFFFF, 0xFFFFFFFF]),               # pixel data offset
    18: (4, True, [0, 1, -1, -64, 63, 64, 65535, 100_000, 2**31 - 1, -(2**31)]),    # width
    22: (4, True, [0, 1, -1, -64, -68, 63, 64, 65535, 100_000, 2**31 - 1, -(2**31)]),  # height (<0: top-down)
    26: (2, False, [0, 2, 65535]),                                                  # planes
    28: (2, False, [0, 1, 2, 4, 7, 8, 15, 16, 24, 32, 33, 64, 65535]),              # bits per pixel
    30: (4, False, [0, 1, 2, 3, 4, 5, 6, 11, 0xFFFFFFFF]),                         # compression
    34: (4, False, [0, 1, 0xFFFFFFFF]),                                             # image size
    46: (4, False, [0, 1, 2, 255, 256, 257, 65536, 0xFFFFFFFF]),                    # colours used
}


def bmp_header_fields(data: bytes, rng: random.Random) -> bytes:
    """Set a BMP header field (size, offsets, width/height, planes, bit count, compression, colours) to an edge."""
    if not data.startswith(b"BM") or len(data) < 54:
        return _fallback(data, rng)
    off = rng.choice(sorted(_BMP_FIELDS))
    size, signed, values = _BMP_FIELDS[off]
    value = rng.choice(values)
    fmt = {(4, True): "<i", (4, False): "<I", (2, False): "<H"}[(size, signed)]
    return data[:off] + struct.pack(fmt, value) + data[off + size:]


# --------------------------------------------------------------------------- registry and cases


GENERIC: dict[str, Mutation] = {
    "flip": flip, "overwrite": overwrite, "truncate": truncate, "insert": insert, "delete": delete,
    "duplicate": duplicate,
}
STRUCTURED: dict[str, dict[str, Mutation]] = {
    "DICOM": {
        "dicom_junk_vr": dicom_junk_vr, "dicom_rows_junk_vr": dicom_rows_junk_vr, "dicom_length": dicom_length,
        "dicom_multi_uid": dicom_multi_uid, "dicom_value": dicom_value, "dicom_drop_element": dicom_drop_element,
        "dicom_encapsulation": dicom_encapsulation,
    },
    "PNG": {
        "png_chunk_length": png_chunk_length, "png_bad_crc": png_bad_crc, "png_huge_ihdr": png_huge_ihdr,
        "png_ihdr_fields": png_ihdr_fields, "png_chunk_body": png_chunk_body,
        "png_drop_or_duplicate_chunk": png_drop_or_duplicate_chunk,
    },
    "JPEG": {
        "jpeg_sof_dims": jpeg_sof_dims, "jpeg_sof_fields": jpeg_sof_fields, "jpeg_drop_marker": jpeg_drop_marker,
        "jpeg_segment_length": jpeg_segment_length, "jpeg_table_junk": jpeg_table_junk,
        "jpeg_scan_markers": jpeg_scan_markers,
    },
    "TIFF": {
        "tiff_ifd_offset": tiff_ifd_offset, "tiff_entry_count": tiff_entry_count,
        "tiff_entry_fields": tiff_entry_fields, "tiff_tag_value": tiff_tag_value,
    },
    "BMP": {"bmp_header_fields": bmp_header_fields},
}
ALL_MUTATIONS: dict[str, Mutation] = {**GENERIC, **{k: v for d in STRUCTURED.values() for k, v in d.items()}}


def mutations_for(seed_name: str) -> tuple[str, ...]:
    """Names of the mutations that make sense for a seed: the generic ones, then its format's."""
    return tuple(GENERIC) + tuple(STRUCTURED[SEED_FORMATS[seed_name]])


def choose_mutations(seed_name: str, rng: random.Random, max_count: int = 3) -> list[str]:
    """1..max_count mutation names, structure-aware ones picked about half the time."""
    structured = tuple(STRUCTURED[SEED_FORMATS[seed_name]])
    return [rng.choice(structured) if rng.random() < 0.5 else rng.choice(tuple(GENERIC))
            for _ in range(rng.randint(1, max_count))]


def make_case(seed_name: str, mutation_names: Sequence[str], rng_seed: int) -> bytes:
    """The seed file with the named mutations applied in order, driven by ``random.Random(rng_seed)``.

    A mutation that happens to leave the bytes unchanged is followed by a bit flip, so every one changes them.
    """
    rng = random.Random(rng_seed)
    data = seed_bytes(seed_name)
    for name in mutation_names:
        mutated = ALL_MUTATIONS[name](data, rng)
        data = mutated if mutated != data else flip(data, rng)  # an edge value equal to the old one
    return data


# --------------------------------------------------------------------------- the property


class FuzzFailure(AssertionError):
    """read_image/read_image_info broke its contract without raising a foreign exception."""


def _check_error(exc: ImageError, label: str, call: str) -> str:
    if label not in str(exc):
        raise FuzzFailure(f"{call}: the ImageError message does not name the file {label!r}: {exc}")
    return type(exc).__name__


def check_case(source: bytes | str | Path, label: str, *, name: str | None = None,
               max_pixels: int = MAX_PIXELS) -> tuple[str, str]:
    """Call ``read_image_info`` then ``read_image`` on one input; return each outcome ("ok" or the error class).

    Any exception other than :class:`ImageError` propagates unchanged (that is the bug fuzzing looks for);
    a result of the wrong kind or an error message that does not contain ``label`` raises :class:`FuzzFailure`.
    ``label`` is what the messages must contain: ``name`` when given, else the path.
    """
    try:
        info = read_image_info(source, name=name, max_pixels=max_pixels)
    except ImageError as exc:
        info_outcome = _check_error(exc, label, "read_image_info")
    else:
        if not isinstance(info, ImageInfo) or info.width * info.height > max_pixels or min(info.width,
                                                                                           info.height) < 1:
            raise FuzzFailure(f"read_image_info returned {info!r}")
        info_outcome = "ok"
    try:
        image = read_image(source, name=name, max_pixels=max_pixels)
    except ImageError as exc:
        image_outcome = _check_error(exc, label, "read_image")
    else:
        if not isinstance(image, np.ndarray) or image.ndim != 2 or image.dtype != np.uint8:
            got = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
            raise FuzzFailure(f"read_image returned {got}, not a 2-D uint8 array")
        if image.size > max_pixels or min(image.shape) < 1:
            raise FuzzFailure(f"read_image returned shape {image.shape} with max_pixels={max_pixels}")
        image_outcome = "ok"
    return info_outcome, image_outcome
