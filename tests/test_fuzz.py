"""Fuzzing: damaged JPEG, PNG, TIFF, BMP and DICOM files raise only ``ImageError`` from the readers.

Every case starts from a small valid seed file (``fuzzing.SEED_NAMES``: JPEG gray/RGB+EXIF/progressive; PNG
gray/16-bit/palette; TIFF raw/LZW 16-bit; BMP gray/RGB; DICOM explicit and implicit VR little endian, 8 and
16 bit, MONOCHROME1, RLE and JPEG-baseline compressed) and applies 1-3 mutations, generic (bit flips, random
runs, truncation, insertion, deletion, duplicated chunks) or structure-aware (DICOM VRs, lengths and UIDs,
PNG chunks and IHDR, JPEG markers and SOF, TIFF IFD offsets and entries, BMP header fields). For each case
``read_image_info`` and ``read_image`` must either succeed (``read_image``: a 2-D uint8 array) or raise an
``ImageError`` whose message names the file; anything else fails the test with the case's seed name,
mutations and rng seed, which ``fuzzing.make_case`` turns back into the same bytes.

Hypothesis runs derandomized (the same cases every run) with no example database: 16 seeds x 25 cases from
bytes and 40 from a file path, plus a seeded sweep of every mutation on every seed (368): about 800 cases, a
few seconds. The benchmark ``benchmarks/fuzz_decode.py`` runs thousands more with the same code.
"""

from __future__ import annotations

import random
import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fuzzing
from fuzzing import (
    MAX_PIXELS, SEED_FORMATS, SEED_NAMES, TAG_ROWS, TAG_TRANSFER_SYNTAX, check_case, dicom_elements, make_case,
    mutations_for, png_chunks, seed_bytes, tiff_ifd,
)
from pneumoscan.io import (
    CorruptImageError, ImageError, ImageTooLargeError, read_image, read_image_info,
)

#: Cases per seed file for bytes input (16 seeds), and cases read from a file path.
EXAMPLES_PER_SEED = 25
PATH_EXAMPLES = 40

FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES_PER_SEED,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# Damaged files make pydicom and Pillow warn; that is expected here, and thousands of warnings slow pytest.
pytestmark = pytest.mark.filterwarnings("ignore")


def _mutations(seed_name: str) -> st.SearchStrategy[list[str]]:
    return st.lists(st.sampled_from(mutations_for(seed_name)), min_size=1, max_size=3)


@pytest.mark.parametrize("seed_name", SEED_NAMES)
def test_seed_files_decode(seed_name: str) -> None:
    """The unmutated seeds are valid, so mutations start from files that reach the decoders."""
    assert check_case(seed_bytes(seed_name), "seed.bin", name="seed.bin") == ("ok", "ok")


@pytest.mark.parametrize("seed_name", SEED_NAMES)
@FUZZ_SETTINGS
@given(data=st.data())
def test_mutated_bytes_raise_only_image_error(seed_name: str, data: st.DataObject) -> None:
    names = data.draw(_mutations(seed_name), label="mutations")
    rng_seed = data.draw(st.integers(0, 2**32 - 1), label="rng_seed")
    label = f"fuzz-{seed_name}.bin"
    check_case(make_case(seed_name, names, rng_seed), label, name=label)


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@settings(FUZZ_SETTINGS, max_examples=PATH_EXAMPLES)
@given(seed_name=st.sampled_from(SEED_NAMES), data=st.data())
def test_mutated_files_raise_only_image_error(case_dir: Path, seed_name: str, data: st.DataObject) -> None:
    """The same through a file path: the message must name the path."""
    names = data.draw(_mutations(seed_name), label="mutations")
    rng_seed = data.draw(st.integers(0, 2**32 - 1), label="rng_seed")
    path = case_dir / f"case-{seed_name}.{SEED_FORMATS[seed_name].lower()}"
    path.write_bytes(make_case(seed_name, names, rng_seed))
    check_case(path, str(path))
    check_case(str(path), str(path))


def test_seeded_sweep_over_every_mutation() -> None:
    """Every mutation on every seed it applies to, twice, from a fixed random.Random seed (not Hypothesis)."""
    rng = random.Random(12)
    outcomes: dict[str, set[str]] = {}
    for seed_name in SEED_NAMES:
        for name in mutations_for(seed_name):
            for _ in range(2):
                result = check_case(make_case(seed_name, [name], rng.getrandbits(32)), "sweep.bin", name="sweep.bin")
                outcomes.setdefault(SEED_FORMATS[seed_name], set()).update(result)
    for fmt, seen in outcomes.items():  # the mutations do damage files, and some files survive them
        assert "CorruptImageError" in seen, fmt


# --------------------------------------------------------------------------- the mutations hit their targets


def _decode_error(data: bytes, name: str = "case.bin") -> ImageError:
    with pytest.raises(ImageError) as info:
        read_image(data, name=name, max_pixels=MAX_PIXELS)
    assert name in str(info.value)
    with pytest.raises(ImageError) as header_info:
        read_image_info(data, name=name, max_pixels=MAX_PIXELS)
    assert name in str(header_info.value)
    return info.value


@pytest.mark.parametrize("seed_name", ["dcm_explicit16", "dcm_explicit8_mono1", "dcm_rle16_mono1"])
@pytest.mark.parametrize("vr", [b"ZZ", b"\x00\x00", b"SQ", b"us"])
def test_dicom_rows_with_a_junk_vr(seed_name: str, vr: bytes) -> None:
    data = seed_bytes(seed_name)
    rows = next(e for e in dicom_elements(data) if e.tag == TAG_ROWS)
    assert rows.vr == b"US"
    _decode_error(data[:rows.offset + 4] + vr + data[rows.offset + 6:])


@pytest.mark.parametrize("seed_name", ["dcm_explicit16", "dcm_implicit16", "dcm_jpeg_baseline8"])
def test_dicom_transfer_syntax_with_two_values(seed_name: str) -> None:
    data = seed_bytes(seed_name)
    el = next(e for e in dicom_elements(data) if e.tag == TAG_TRANSFER_SYNTAX)
    current = data[el.value_offset:el.end].rstrip(b"\x00")
    value = current + b"\\1.2.840.10008.1.2.1"
    value += b"\x00" * (len(value) % 2)
    mutated = data[:el.len_offset] + len(value).to_bytes(2, "little") + value + data[el.end:]
    mutated = fuzzing._fix_group2_length(mutated, len(value) - el.length)
    _decode_error(mutated)


def test_dicom_walker_reads_implicit_vr_after_the_meta_group() -> None:
    els = dicom_elements(seed_bytes("dcm_implicit16"))
    assert els[0].tag == (0x0002, 0x0000) and els[0].vr == b"UL"
    rows = next(e for e in els if e.tag == TAG_ROWS)
    assert rows.vr is None and rows.length == 2


@pytest.mark.parametrize("size", [(100_000, 100_000), (0xFFFFFFFF, 64), (2001, 2001)])
def test_png_with_huge_ihdr_dimensions_is_refused_before_decoding(size: tuple[int, int]) -> None:
    data = seed_bytes("png_gray")
    ihdr = png_chunks(data)[0]
    body = size[0].to_bytes(4, "big") + size[1].to_bytes(4, "big") + data[ihdr.offset + 16:ihdr.offset + 21]
    err = _decode_error(fuzzing._png_rewrite(data, ihdr, body, None))
    if size[0] <= 0x7FFFFFFF:
        assert isinstance(err, ImageTooLargeError)


def test_png_with_a_bad_crc_is_corrupt() -> None:
    data = bytearray(seed_bytes("png_gray"))
    ihdr = png_chunks(bytes(data))[0]
    data[ihdr.end - 1] ^= 0xFF
    assert isinstance(_decode_error(bytes(data)), CorruptImageError)


def test_jpeg_with_huge_sof_dimensions_is_refused_before_decoding() -> None:
    data = bytearray(seed_bytes("jpeg_gray"))
    sof = next(s for s in fuzzing.jpeg_segments(bytes(data)) if s.marker == 0xC0)
    data[sof.offset + 5:sof.offset + 9] = (65535).to_bytes(2, "big") * 2
    assert isinstance(_decode_error(bytes(data)), ImageTooLargeError)


@pytest.mark.parametrize("marker", [0xDB, 0xC4, 0xC0, 0xDA])
def test_jpeg_without_a_marker_segment(marker: int) -> None:
    """No DQT, SOF or SOS: refused (SOF by the header reader too). No DHT: libjpeg's default tables decode it."""
    data = seed_bytes("jpeg_gray")
    seg = next(s for s in fuzzing.jpeg_segments(data) if s.marker == marker)
    info, image = check_case(data[:seg.offset] + data[seg.end:], "case.jpg", name="case.jpg")
    assert image == ("ok" if marker == 0xC4 else "CorruptImageError")
    if marker == 0xC0:
        assert info == "CorruptImageError"


@pytest.mark.parametrize("offset", [0, 3, 0x7FFFFFFF, 0xFFFFFFFF])
def test_tiff_with_a_bad_ifd_offset(offset: int) -> None:
    data = seed_bytes("tiff_raw")
    assert tiff_ifd(data) is not None
    _decode_error(data[:4] + offset.to_bytes(4, "little") + data[8:])


def test_every_structured_mutation_changes_its_seed() -> None:
    for seed_name in SEED_NAMES:
        for name in mutations_for(seed_name):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                assert make_case(seed_name, [name], 7) != seed_bytes(seed_name), (seed_name, name)
