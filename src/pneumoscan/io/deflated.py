"""Deflated Explicit VR Little Endian (DICOM PS3.5 A.5), inflated with a bound: the one place that reads it, for
files and uploads (:func:`read_deflated_file`) and for a data set received by the DICOM node
(:func:`read_deflated_dataset`).

In that transfer syntax everything after the file meta is one raw deflate stream, and pydicom (``dcmread``, and
pynetdicom's ``event.dataset``) inflates it whole before anything can look at it: 1 MB on disk can cost gigabytes (a
"decompression bomb"). Here the stream is inflated only as pydicom's parser reads it, in two steps with a bound each:

1. the header, up to the top-level Pixel Data element, at most :data:`HEADER_ROOM` bytes inflated;
2. once the header's Rows x Columns pass the pixel limit (and its Pixel Data element declares no more bytes than
   those pixels need), the pixel data the header declares plus :data:`TRAILER_ROOM`.

Inflating past a bound is refused with :class:`~pneumoscan.errors.ImageTooLargeError` (message: the file and the
problem) before the excess is produced, so a legitimate deflated film costs what the same film uncompressed costs,
and a bomb costs at most the bound.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable
from typing import IO, Any

from pneumoscan.errors import ImageTooLargeError

__all__ = ["HEADER_ROOM", "TRAILER_ROOM", "is_deflated", "pixel_data_bytes", "read_deflated_dataset",
           "read_deflated_file"]

#: Most bytes the data set may inflate to before its Pixel Data element (the header: patient, study, sequences).
HEADER_ROOM = 8 * 1024 * 1024
#: Most bytes the data set may inflate to after the pixel data its header declares (trailing elements, padding).
TRAILER_ROOM = 1024 * 1024
#: Compressed bytes read from the source at a time.
_CHUNK = 1024 * 1024
_PIXEL_DATA = 0x7FE00010
_PIXEL_DATA_LE = b"\xe0\x7f\x10\x00"  # its tag as written in little endian
_MIB = 1024 * 1024


def is_deflated(transfer_syntax: Any) -> bool:
    """True for a transfer syntax whose data set is one deflate stream (as pydicom's ``UID.is_deflated``, which
    pynetdicom follows when it decodes a received data set)."""
    from pydicom.uid import UID

    try:
        return bool(UID(str(transfer_syntax or "").strip()).is_deflated)
    except Exception:  # noqa: BLE001 - not a UID at all: not deflated
        return False


def pixel_data_bytes(ds: Any) -> int:
    """Bytes of native pixel data the header declares: Rows x Columns x Samples per Pixel x Bits Allocated / 8 x
    frames, rounded up to an even length (0 when the header does not say)."""
    rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    samples = int(ds.get("SamplesPerPixel") or 1)
    bits = int(ds.get("BitsAllocated") or 16)
    frames = int(ds.get("NumberOfFrames") or 1)
    n = (rows * cols * samples * bits * max(frames, 1) + 7) // 8
    return n + n % 2


class _Inflating:
    """A read-only, seekable file over a raw deflate stream that inflates only what is read, never past ``limit``
    bytes in all (it raises instead, before inflating the excess). Keeps what it inflated, so that pydicom can seek
    back."""

    def __init__(self, source: IO[bytes], label: str) -> None:
        self._source = source
        self._zip = zlib.decompressobj(-zlib.MAX_WBITS)
        self._tail = b""
        self._buf = bytearray()
        self._pos = 0
        self._ended = False
        self.label = label
        self.limit = HEADER_ROOM
        self.refusal = ""
        self.name = label

    def _fill(self, upto: int) -> None:
        # One byte past the limit tells whether the stream goes on (refuse) or ends exactly there (fine).
        upto = min(upto, self.limit + 1)
        while len(self._buf) < upto and not self._ended:
            if not self._tail:
                self._tail = self._source.read(_CHUNK)
                if not self._tail:
                    self._ended = True  # the input ended: pydicom's parser says what is missing
                    break
            self._buf += self._zip.decompress(self._tail, upto - len(self._buf))
            self._tail = self._zip.unconsumed_tail
            if self._zip.eof:
                self._ended = True
        if len(self._buf) > self.limit:
            raise ImageTooLargeError(self.label, self.refusal)

    def read(self, n: int | None = -1) -> bytes:
        end = self.limit + 1 if n is None or n < 0 else self._pos + n
        self._fill(end)
        with memoryview(self._buf) as view:
            out = view[self._pos:end].tobytes()
        self._pos += len(out)
        return out

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 2:
            self._fill(self.limit + 1)
            offset += len(self._buf)
        elif whence == 1:
            offset += self._pos
        self._pos = max(0, offset)
        return self._pos

    def tell(self) -> int:
        return self._pos

    @property
    def inflated(self) -> int:
        return len(self._buf)


def _at_pixel_data(tag: Any, vr: Any, length: int) -> bool:
    return int(tag) == _PIXEL_DATA


#: Checks a deflated data set's header (its Pixel Data element present, its value not) before the pixel data are
#: inflated: raises an ImageError for frames, size or an encoding it refuses (the caller's pixel limit).
HeaderCheck = Callable[[Any], None]


def _read(source: IO[bytes], label: str, *, check_header: HeaderCheck | None,
          header_only: bool) -> tuple[Any, _Inflating]:
    """Parse the deflated data set in ``source`` (positioned at its first compressed byte) within the bounds."""
    from pydicom.dataelem import RawDataElement
    from pydicom.filereader import read_dataset
    from pydicom.tag import BaseTag

    stream = _Inflating(source, label)
    stream.refusal = (f"the DICOM data set is deflate-compressed (Deflated Explicit VR Little Endian) and its header "
                      f"(before the pixel data) inflates to more than {HEADER_ROOM // _MIB} MiB; refused without "
                      "inflating the rest, to protect memory (a decompression bomb, or a damaged file)")
    header = read_dataset(stream, is_implicit_VR=False, is_little_endian=True, stop_when=_at_pixel_data)
    at = stream.tell()
    element = stream.read(12)
    stream.seek(at)
    if len(element) < 12 or element[:4] != _PIXEL_DATA_LE:
        return header, stream  # no pixel data: the whole data set is parsed (within HEADER_ROOM)
    vr = element[4:6].decode("ascii", "replace")
    declared = int.from_bytes(element[8:12], "little")
    header[_PIXEL_DATA] = RawDataElement(BaseTag(_PIXEL_DATA), vr, declared, None, at + 12, False, True)
    if header_only:
        return header, stream
    if check_header is not None:
        check_header(header)
    need = pixel_data_bytes(header)
    size = f"{int(header.Columns)} x {int(header.Rows)} pixels"
    if declared != 0xFFFFFFFF and declared > need:
        raise ImageTooLargeError(label, f"the DICOM data set is deflate-compressed and its Pixel Data element declares "
                                        f"{declared:,} bytes, more than the {need:,} its header's {size} need; refused "
                                        "before inflating it, to protect memory (a decompression bomb, or a damaged "
                                        "file)")
    stream.limit = at + 12 + need + TRAILER_ROOM
    stream.refusal = (f"the DICOM data set is deflate-compressed and inflates to more than the "
                      f"{stream.limit:,} bytes its header's {size} need; refused without inflating the rest, to "
                      "protect memory (a decompression bomb, or a damaged file)")
    stream.seek(0)
    return read_dataset(stream, is_implicit_VR=False, is_little_endian=True), stream


def read_deflated_dataset(body: bytes | bytearray | memoryview, label: str, *,
                          check_header: HeaderCheck | None = None) -> Any:
    """A deflated data set as received (the bytes after the file meta, e.g. a C-STORE's), parsed within the bounds:
    what pynetdicom's ``event.dataset`` gives for it, without inflating more than the header says it needs.

    Raises:
        ImageTooLargeError: the header or the data set inflates past its bound.
        ImageError: what ``check_header`` raises, before the pixel data are inflated.
    """
    ds, _ = _read(io.BytesIO(bytes(body)), label, check_header=check_header, header_only=False)
    ds.set_original_encoding(False, True, ds._character_set)
    return ds


def read_deflated_file(fp: IO[bytes], preamble: bytes | None, file_meta: Any, label: str, *,
                       check_header: HeaderCheck | None, header_only: bool) -> Any:
    """The ``FileDataset`` of a deflated DICOM file whose preamble and file meta were read (``fp`` positioned at
    the data set), parsed within the bounds. ``header_only``: only the header is inflated (the Pixel Data element
    is there, its value is not; never read it), and ``check_header`` is not called.

    Raises what :func:`read_deflated_dataset` raises.
    """
    from pydicom.dataset import FileDataset

    dataset, _ = _read(fp, label, check_header=check_header, header_only=header_only)
    ds = FileDataset(io.BytesIO(b""), dataset, preamble, file_meta, False, True)
    ds.set_original_encoding(False, True, dataset._character_set)
    ds.filename = None
    return ds
