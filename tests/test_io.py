"""Tests for pneumoscan.io: decoding every supported format to (H, W) uint8, and refusing bad input clearly."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from imagefactory import (
    dicom_bytes,
    jpeg_bytes,
    make_dicom,
    make_jpeg,
    make_png,
    palette_png_bytes,
    png_bytes,
    png_header_bytes,
    synthetic_xray,
)
from PIL import Image, ImageFile

from pneumoscan.io import images as pio
from pneumoscan.io import (
    CorruptImageError,
    EmptyFileError,
    ImageError,
    ImageInfo,
    ImageTooLargeError,
    ImageMemoryError,
    ImageTooSmallError,
    NotAnImageError,
    UnsupportedDicomError,
    read_image,
    read_image_info,
    sniff_format,
)
from pneumoscan.preprocessing import resize_square

HTJ2K = "1.2.840.10008.1.2.4.201"  # a compressed transfer syntax with no decoder installed here


@pytest.fixture(scope="module")
def xray() -> np.ndarray:
    return synthetic_xray(96, 80, seed=1)


def _luma(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _rgb(gray: np.ndarray) -> np.ndarray:
    return np.stack([gray, gray[::-1], 255 - gray], axis=-1).astype(np.uint8)


def _assert_gray(arr: np.ndarray, shape: tuple[int, int]) -> None:
    assert arr.dtype == np.uint8 and arr.shape == shape and arr.flags.c_contiguous


# --------------------------------------------------------------------------- PNG


def test_png_gray_8bit_is_exact(tmp_path, xray):
    out = read_image(make_png(tmp_path / "g.png", xray))
    _assert_gray(out, xray.shape)
    assert np.array_equal(out, xray)


def test_png_rgb_uses_itu601_luma(tmp_path, xray):
    rgb = _rgb(xray)
    out = read_image(make_png(tmp_path / "rgb.png", rgb))
    _assert_gray(out, xray.shape)
    assert np.abs(out.astype(float) - _luma(rgb.astype(float))).max() <= 1
    pure = np.zeros((64, 64, 3), np.uint8)
    pure[..., 0] = 255  # pure red -> 0.299 * 255
    assert read_image(png_bytes(pure))[0, 0] == 76


def test_png_rgba_is_composited_onto_black(tmp_path):
    rgba = np.full((64, 64, 4), 200, np.uint8)
    rgba[:, :16, 3] = 0  # fully transparent
    rgba[:, 16:32, 3] = 128  # half transparent
    rgba[:, 32:, 3] = 255  # opaque
    out = read_image(make_png(tmp_path / "a.png", rgba))
    assert (out[:, :16] == 0).all()
    assert abs(int(out[0, 20]) - 100) <= 1
    assert (out[:, 32:] == 200).all()


def test_png_la_is_composited_onto_black():
    la = np.full((64, 64, 2), 180, np.uint8)
    la[..., 1] = 255
    la[:32, :, 1] = 0
    out = read_image(png_bytes(la))
    assert (out[:32] == 0).all() and (out[32:] == 180).all()


def test_png_palette_and_palette_transparency():
    indices = np.zeros((64, 64), np.uint8)
    indices[:, 32:] = 1
    indices[:8] = 2
    palette = [(10, 10, 10), (255, 0, 0), (250, 250, 250)]
    out = read_image(palette_png_bytes(indices, palette))
    assert out[20, 0] == 10 and out[20, 40] == 76 and out[0, 0] == 250
    out = read_image(palette_png_bytes(indices, palette, transparent_index=2))
    assert (out[:8] == 0).all() and out[20, 0] == 10


def test_png_16bit_is_min_max_stretched(tmp_path):
    pixels = np.full((64, 80), 1000, np.uint16)  # a 12-bit image stored in 16 bits: range 1000..5000
    pixels[0, 0], pixels[0, 1], pixels[0, 2], pixels[0, 3] = 5000, 3000, 2000, 1001
    out = read_image(make_png(tmp_path / "16.png", pixels))
    _assert_gray(out, (64, 80))
    assert out[0, 0] == 255 and out[1, 1] == 0
    assert out[0, 1] == 128  # (3000-1000)/4000*255 = 127.5 -> rounds to even 128
    assert out[0, 2] == 64  # 63.75
    assert out[0, 3] == 0  # 0.06
    assert read_image_info(tmp_path / "16.png") == ImageInfo(80, 64, "I;16", "PNG", 16)


def test_png_16bit_constant_image_gives_zeros():
    out = read_image(png_bytes(np.full((64, 64), 4321, np.uint16)))
    assert out.dtype == np.uint8 and not out.any()


# --------------------------------------------------------------------------- JPEG


def test_jpeg_gray(tmp_path, xray):
    out = read_image(make_jpeg(tmp_path / "g.jpg", xray))
    _assert_gray(out, xray.shape)
    assert np.abs(out.astype(int) - xray).mean() < 3


def test_jpeg_rgb(tmp_path, xray):
    rgb = _rgb(xray)
    out = read_image(make_jpeg(tmp_path / "rgb.jpeg", rgb))
    _assert_gray(out, xray.shape)
    assert np.abs(out - _luma(rgb.astype(float))).mean() < 4


def test_jpeg_cmyk(tmp_path, xray):
    path = make_jpeg(tmp_path / "cmyk.jpg", np.stack([xray] * 3, axis=-1), mode="CMYK")
    with Image.open(path) as im:
        assert im.mode == "CMYK"
    out = read_image(path)
    _assert_gray(out, xray.shape)
    assert np.abs(out.astype(int) - xray).mean() < 4
    assert read_image_info(path).mode == "CMYK"


def test_exif_orientation_6_is_applied(tmp_path):
    stored = np.zeros((64, 96), np.uint8)  # landscape as stored
    stored[:16, :16] = 255  # bright marker at the stored top-left
    path = make_jpeg(tmp_path / "rot.jpg", stored, exif_orientation=6)
    out = read_image(path)
    _assert_gray(out, (96, 64))  # displayed portrait: rotated 90 degrees clockwise
    assert out[:16, -16:].mean() > 200 and out[:16, :16].mean() < 50  # marker now top-right
    info = read_image_info(path)
    assert (info.width, info.height) == (64, 96)


def test_bytes_input_matches_path_and_name_is_used(tmp_path, xray):
    path = make_png(tmp_path / "p.png", xray)
    assert np.array_equal(read_image(path.read_bytes()), read_image(path))
    assert np.array_equal(read_image(bytearray(path.read_bytes())), xray)
    assert np.array_equal(read_image(str(path)), xray)
    with pytest.raises(ImageTooSmallError) as err:
        read_image(png_bytes(xray[:40]), name="upload-7.png")
    assert str(err.value).startswith("upload-7.png: ")
    with pytest.raises(EmptyFileError) as err:
        read_image(b"")
    assert err.value.path == "<image bytes>"


def test_bmp_and_tiff_are_accepted(tmp_path, xray):
    for fmt in ("BMP", "TIFF"):
        path = tmp_path / f"x.{fmt.lower()}"
        Image.fromarray(xray).save(path, format=fmt)
        assert np.array_equal(read_image(path), xray)
        assert read_image_info(path).format == fmt


# --------------------------------------------------------------------------- refusals


def _refuses(exc_type, source, *, name_in_message: str, **kwargs):
    """read_image and read_image_info both raise exc_type, and the message names the file."""
    for fn in (read_image, read_image_info):
        with pytest.raises(exc_type) as err:
            fn(source, **kwargs)
        assert name_in_message in str(err.value)
        assert str(err.value) == f"{err.value.path}: {err.value.reason}"
    return err.value


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    err = _refuses(EmptyFileError, path, name_in_message="empty.png")
    assert "empty" in err.reason


def test_random_bytes(tmp_path):
    path = tmp_path / "noise.bin"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    _refuses(NotAnImageError, path, name_in_message="noise.bin")


def test_text_file_with_png_extension(tmp_path):
    path = tmp_path / "report.png"
    path.write_text("Patient report: no acute findings.\n" * 10)
    err = _refuses(NotAnImageError, path, name_in_message="report.png")
    assert "text" in err.reason and ".png" in err.reason


@pytest.mark.parametrize(("head", "words"), [(b"%PDF-1.7\n", "PDF"), (b"GIF89a" + bytes(200), "GIF")])
def test_other_formats_are_named(head, words):
    with pytest.raises(NotAnImageError, match=words):
        read_image(head, name="thing.jpg")


def test_dicom_without_preamble_gets_a_hint(xray):
    with pytest.raises(NotAnImageError, match="preamble"):
        read_image(dicom_bytes(xray)[128 + 4:], name="raw.dcm")


@pytest.mark.parametrize("kind", ["jpeg", "png"])
def test_truncated_files_are_corrupt(tmp_path, xray, kind):
    data = jpeg_bytes(xray) if kind == "jpeg" else png_bytes(xray)
    path = tmp_path / f"half.{kind}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptImageError) as err:
        read_image(path)
    assert "half." in str(err.value) and "damaged or incomplete" in err.value.reason
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # the global we rely on was not touched
    # A header cut short is found by read_image_info too.
    path.write_bytes(data[:20])
    _refuses(CorruptImageError, path, name_in_message="half.")


def test_too_small(tmp_path):
    path = make_png(tmp_path / "scan.png", np.zeros((30, 40), np.uint8))
    err = _refuses(ImageTooSmallError, path, name_in_message="scan.png")
    assert err.reason == "image is 40 x 30 pixels; the smallest side must be at least 64"
    assert read_image(path, min_side=16).shape == (30, 40)


def test_too_large_modest_image_tiny_limit(tmp_path, xray):
    path = make_png(tmp_path / "big.png", xray)
    err = _refuses(ImageTooLargeError, path, name_in_message="big.png", max_pixels=1000)
    assert "80 x 96" in err.reason and "1,000" in err.reason


def test_too_large_is_refused_from_the_header_before_decoding(tmp_path):
    # The header claims 9000 x 8000 (72 MP > 60 MP) but the data are a few bytes: decoding would fail as corrupt.
    path = tmp_path / "bomb.png"
    path.write_bytes(png_header_bytes(9000, 8000))
    err = _refuses(ImageTooLargeError, path, name_in_message="bomb.png")
    assert "9000 x 8000" in err.reason
    # Under a higher limit the header is fine (info needs no decode) and the missing data are then found.
    assert read_image_info(path, max_pixels=10**8) == ImageInfo(9000, 8000, "L", "PNG", 8)
    with pytest.raises(CorruptImageError):
        read_image(path, max_pixels=10**8)


def test_pillow_decompression_bomb_becomes_too_large(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(png_header_bytes(30000, 30000))  # beyond Pillow's own hard limit
    _refuses(ImageTooLargeError, path, name_in_message="huge.png", max_pixels=10**10)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageError) as err:
        read_image(tmp_path / "nope.png")
    assert type(err.value) is ImageError and err.value.reason == "file not found" and "nope.png" in str(err.value)
    with pytest.raises(ImageError, match="folder"):
        read_image_info(tmp_path)
    with pytest.raises(TypeError):
        read_image(123)  # type: ignore[arg-type]


def test_every_error_while_reading_becomes_the_files_image_error(monkeypatch, xray):
    def boom(exc):
        def _raise(*_a, **_k):
            raise exc
        return _raise

    monkeypatch.setattr(pio, "_pil_to_gray", boom(RuntimeError("weird codec state")))
    with pytest.raises(CorruptImageError, match="weird codec state") as err:
        read_image(png_bytes(xray), name="w.png")
    assert isinstance(err.value.__cause__, RuntimeError)
    monkeypatch.setattr(pio, "_pil_to_gray", boom(MemoryError()))
    with pytest.raises(ImageMemoryError, match="m.png: not enough memory"):
        read_image(png_bytes(xray), name="m.png")
    # Errors raised outside the decoders (header checks, lazy parsers) are the file's error too.
    monkeypatch.setattr(pio, "_check_size", boom(NotImplementedError("Unknown Value Representation 'ZZ'")))
    with pytest.raises(CorruptImageError, match="h.png: .*Unknown Value Representation"):
        read_image(png_bytes(xray), name="h.png")
    monkeypatch.setattr(pio, "_check_size", boom(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        read_image(png_bytes(xray))


def _damaged_dicom(xray, kind: str) -> bytes:
    """A valid explicit-VR DICOM with a damaged header: ``vr`` junk VR on Rows, ``uid`` a two-valued
    Transfer Syntax UID, ``length`` an element length far past the end of the file."""
    data = bytearray(dicom_bytes(xray, bits=8))
    if kind == "vr":
        i = data.find(b"\x28\x00\x10\x00US")
        data[i + 4:i + 6] = b"ZZ"
    elif kind == "uid":
        i = data.find(b"1.2.840.10008.1.2.1\x00")
        data[i:i + 20] = b"1.2.840.10008.1.2\\12"
    elif kind == "length":
        i = data.find(b"\x28\x00\x11\x00US")
        data[i + 6:i + 8] = b"\xff\x7f"
    return bytes(data)


@pytest.mark.parametrize("kind", ["vr", "uid", "length"])
def test_damaged_dicom_header_is_the_files_error(tmp_path, xray, kind):
    path = tmp_path / f"bad-{kind}.dcm"
    path.write_bytes(_damaged_dicom(xray, kind))
    for read in (read_image, read_image_info):
        with pytest.raises(ImageError) as err:
            read(path)
        assert f"bad-{kind}.dcm" in str(err.value)


def test_broken_link_and_link_loop(tmp_path):
    (tmp_path / "dangling.png").symlink_to(tmp_path / "gone.png")
    with pytest.raises(ImageError, match="broken link"):
        read_image(tmp_path / "dangling.png")
    (tmp_path / "a.png").symlink_to(tmp_path / "b.png")
    (tmp_path / "b.png").symlink_to(tmp_path / "a.png")
    with pytest.raises(ImageError, match="loop of symbolic links"):
        read_image(tmp_path / "a.png")


def test_errors_pickle_and_are_value_errors():
    err = ImageTooSmallError("a.png", "too small")
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is ImageTooSmallError and (copy.path, copy.reason) == ("a.png", "too small")
    assert str(copy) == "a.png: too small" and isinstance(copy, ValueError)


# --------------------------------------------------------------------------- DICOM


def test_dicom_monochrome2_min_max(tmp_path):
    stored = np.full((64, 72), 100, np.uint16)
    stored[0, 0], stored[0, 1] = 4095, 2100  # 12 bits stored
    path = make_dicom(tmp_path / "m2.dcm", stored, bits_stored=12)
    out = read_image(path)
    _assert_gray(out, (64, 72))
    assert out[0, 0] == 255 and out[5, 5] == 0 and out[0, 1] == 128  # (2100-100)/3995*255 = 127.66
    assert read_image_info(path) == ImageInfo(72, 64, "DICOM:MONOCHROME2", "DICOM", 12)


def test_dicom_monochrome1_is_inverted(tmp_path):
    stored = np.full((64, 64), 3000, np.uint16)
    stored[:8, :8] = 50  # low stored value: bright on a MONOCHROME1 display
    out = read_image(make_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1"))
    assert (out[:8, :8] == 255).all() and (out[8:, 8:] == 0).all()
    assert read_image_info(tmp_path / "m1.dcm").mode == "DICOM:MONOCHROME1"


def _window(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 linear window onto 0..255."""
    y = ((x - (center - 0.5)) / (width - 1) + 0.5) * 255
    return np.rint(np.clip(y, 0, 255))


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dicom_rescale_then_window(tmp_path, photometric):
    stored = np.zeros((64, 64), np.uint16)
    values = [0, 150, 200, 250, 350, 4000]
    stored[0, : len(values)] = values
    path = make_dicom(tmp_path / "w.dcm", stored, photometric=photometric, slope=2.0, intercept=-100.0,
                      window=(300.0, 401.0), bits_stored=12)
    out = read_image(path)
    hu = np.array(values, float) * 2 - 100  # modality values: -100, 200, 300, 400, 600, 7900
    expected = _window(hu, 300, 401)
    assert expected.tolist() == [0, 64, 128, 192, 255, 255]  # hand-checked: (200-299.5)/400+0.5 = 0.25125 -> 64
    if photometric == "MONOCHROME1":
        expected = 255 - expected
    assert out[0, : len(values)].tolist() == expected.tolist()


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_dicom_voi_lut_table_is_preferred_over_window(tmp_path, photometric):
    table = [1000 + 10 * i for i in range(101)]  # maps stored 100..200 onto 1000..2000
    stored = np.full((64, 64), 160, np.uint16)
    stored[0, :4] = [0, 100, 125, 4000]  # below the table, first entry, a quarter in, beyond the table
    path = make_dicom(tmp_path / "lut.dcm", stored, photometric=photometric, voi_lut=(100, table),
                      window=(10.0, 5.0), bits_stored=12)
    expected = np.array([0, 0, 64, 255, 153])  # (table value - 1000) / 1000 * 255, rounded
    if photometric == "MONOCHROME1":
        expected = 255 - expected
    out = read_image(path)
    assert out[0, :4].tolist() + [out[5, 5]] == expected.tolist()


def test_dicom_signed_pixels_with_intercept(tmp_path):
    stored = np.zeros((64, 64), np.int16)
    stored[0, 0], stored[0, 1] = -1000, 1000
    out = read_image(make_dicom(tmp_path / "s.dcm", stored, signed=True, intercept=-24.0, slope=1.5))
    assert out[0, 0] == 0 and out[0, 1] == 255 and out[5, 5] == 128  # 0 is the middle of [-1000, 1000]


def test_dicom_rle_compressed_decodes(tmp_path, xray):
    plain = read_image(make_dicom(tmp_path / "plain.dcm", xray.astype(np.uint16)))
    out = read_image(make_dicom(tmp_path / "rle.dcm", xray.astype(np.uint16), compression="rle"))
    assert np.array_equal(out, plain)


def test_dicom_jpeg_baseline_decodes(tmp_path, xray):
    path = make_dicom(tmp_path / "jpeg.dcm", xray, bits=8, compression="jpeg-baseline")
    out = read_image(path)
    _assert_gray(out, xray.shape)
    # 8-bit without a window is min-max stretched; compare with the same stretch of the JPEG itself.
    ref = read_image(jpeg_bytes(xray)).astype(float)
    ref = (ref - ref.min()) / (ref.max() - ref.min()) * 255
    assert np.abs(out - ref).mean() < 2


def test_dicom_rgb_becomes_luma(tmp_path, xray):
    rgb = _rgb(xray)
    out = read_image(make_dicom(tmp_path / "rgb.dcm", rgb, photometric="RGB", bits=8))
    assert np.abs(out - _luma(rgb.astype(float))).max() <= 0.5 + 1e-9
    assert read_image_info(tmp_path / "rgb.dcm").mode == "DICOM:RGB"


def test_dicom_bytes_input(xray):
    data = dicom_bytes(xray.astype(np.uint16))
    assert read_image(data, name="upload.dcm").shape == xray.shape
    assert sniff_format(data[:132]) == "DICOM"


def test_dicom_multi_frame_is_refused(tmp_path, xray):
    path = make_dicom(tmp_path / "cine.dcm", xray.astype(np.uint16), frames=3)
    err = _refuses(UnsupportedDicomError, path, name_in_message="cine.dcm")
    assert "3 frames" in err.reason


def test_dicom_without_pixel_data_is_refused(tmp_path, xray):
    path = make_dicom(tmp_path / "sr.dcm", xray.astype(np.uint16), with_pixels=False)
    err = _refuses(UnsupportedDicomError, path, name_in_message="sr.dcm")
    assert "no image" in err.reason


@pytest.mark.parametrize(("syntax", "words"), [(HTJ2K, "High-Throughput JPEG 2000"), ("1.2.3.4.5", "unknown")])
def test_dicom_undecodable_transfer_syntax(tmp_path, xray, syntax, words):
    path = make_dicom(tmp_path / "j2k.dcm", xray.astype(np.uint16), transfer_syntax=syntax)
    err = _refuses(UnsupportedDicomError, path, name_in_message="j2k.dcm")
    assert words in err.reason and syntax in err.reason
    assert "pylibjpeg" in err.reason and "gdcm" in err.reason


def test_dicom_truncated_is_corrupt(tmp_path, xray):
    data = dicom_bytes(xray.astype(np.uint16))
    path = tmp_path / "cut.dcm"
    path.write_bytes(data[: len(data) - 500])
    with pytest.raises(CorruptImageError, match="cut.dcm"):
        read_image(path)


def test_dicom_size_limits_come_from_the_header(tmp_path):
    small = make_dicom(tmp_path / "small.dcm", np.zeros((40, 100), np.uint16))
    assert "100 x 40" in _refuses(ImageTooSmallError, small, name_in_message="small.dcm").reason
    big = make_dicom(tmp_path / "big.dcm", np.zeros((64, 64), np.uint16))
    _refuses(ImageTooLargeError, big, name_in_message="big.dcm", max_pixels=4000)


# --------------------------------------------------------------------------- sniffing, info, resize


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\xff\xd8\xff\xe0" + bytes(20), "JPEG"),
        (b"\x89PNG\r\n\x1a\n" + bytes(20), "PNG"),
        (bytes(128) + b"DICM" + bytes(8), "DICOM"),
        (b"II*\x00" + bytes(20), "TIFF"),
        (b"MM\x00*" + bytes(20), "TIFF"),
        (b"BM" + bytes(12) + (40).to_bytes(4, "little"), "BMP"),
        (b"BMW is a car", None),
        (b"", None),
        (b"GIF89a", None),
    ],
)
def test_sniff_format(head, expected):
    assert sniff_format(head) == expected


def test_read_image_info_values(tmp_path, xray):
    assert read_image_info(make_png(tmp_path / "g.png", xray)) == ImageInfo(80, 96, "L", "PNG", 8)
    assert read_image_info(make_png(tmp_path / "c.png", _rgb(xray))) == ImageInfo(80, 96, "RGB", "PNG", 8)
    assert read_image_info(make_png(tmp_path / "p.png", _rgb(xray), mode="P")).mode == "P"
    assert read_image_info(make_jpeg(tmp_path / "j.jpg", xray)) == ImageInfo(80, 96, "L", "JPEG", 8)
    assert read_image_info(jpeg_bytes(_rgb(xray))) == ImageInfo(80, 96, "RGB", "JPEG", 8)


def test_resize_square_shape_dtype_and_range():
    image = synthetic_xray(300, 180)
    out = resize_square(image, 64)
    assert out.shape == (64, 64) and out.dtype == np.uint8
    assert resize_square(np.full((500, 300), 77, np.uint8), 32).tolist() == np.full((32, 32), 77).tolist()
    assert resize_square(image[:40, :50], 128).shape == (128, 128)  # upscaling works too
    assert np.array_equal(resize_square(out, 64), out)  # same size: unchanged


def test_resize_square_is_antialiased():
    checker = ((np.indices((512, 512)).sum(axis=0) % 2) * 255).astype(np.uint8)  # 1-pixel checkerboard
    out = resize_square(checker, 64)
    assert np.abs(out.astype(int) - 128).max() <= 2  # averaged to mid-gray, no aliasing


def test_resize_square_is_pillow_bilinear():
    image = synthetic_xray(250, 130, seed=3)
    expected = np.array(Image.fromarray(image).resize((224, 224), Image.Resampling.BILINEAR))
    assert np.array_equal(resize_square(image, 224), expected)


@pytest.mark.parametrize(
    ("image", "size"),
    [(np.zeros((64, 64), np.float32), 32), (np.zeros((64, 64, 3), np.uint8), 32), (np.zeros((64, 64), np.uint8), 0)],
)
def test_resize_square_rejects_bad_input(image, size):
    with pytest.raises(ValueError):
        resize_square(image, size)


# --------------------------------------------------------------------------- real images


@pytest.mark.shared_data
def test_fullres_samples_decode(fullres_samples):
    for path in fullres_samples:
        image = read_image(path)
        assert image.ndim == 2 and image.dtype == np.uint8, path
        assert min(image.shape) >= 64, path
        info = read_image_info(path)
        assert (info.height, info.width) == image.shape, path
        assert resize_square(image, 224).shape == (224, 224)


def test_a_pipe_is_refused_without_blocking(tmp_path):
    import os

    fifo = tmp_path / "film.png"
    os.mkfifo(fifo)
    with pytest.raises(ImageError, match="not a regular file"):
        read_image(fifo)  # opening it would block for ever


def test_reduce_to_decodes_large_jpegs_at_reduced_scale_and_nothing_else_differently(tmp_path):
    big = synthetic_xray(1000, 820, seed=7)
    # A large grey JPEG: 1/4 scale keeps both sides >= 200 (1/8 would not); a colour one turned by EXIF likewise.
    assert read_image(jpeg_bytes(big), reduce_to=200).shape == (250, 205)
    rgb = jpeg_bytes(np.repeat(big[..., None], 3, axis=2), exif_orientation=6)
    assert read_image(rgb, reduce_to=200).shape == (205, 250)
    assert read_image(jpeg_bytes(big), reduce_to=2000).shape == (1000, 820)
    # Under twice ``reduce_to`` on a side, PNG and DICOM: bit for bit the full decode (colour JPEGs included).
    small = synthetic_xray(399, 1000, seed=8)
    for data in (jpeg_bytes(small), jpeg_bytes(np.repeat(small[..., None], 3, axis=2)), png_bytes(big),
                 dicom_bytes(big.astype(np.uint16) * 16, bits_stored=12)):
        assert np.array_equal(read_image(data, reduce_to=200), read_image(data))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="reduce_to"):
            read_image(jpeg_bytes(big), reduce_to=bad)


def test_decode_image_says_the_films_own_size_and_the_scale_it_was_decoded_at():
    import pydicom

    from pneumoscan.io.images import decode_image

    big = synthetic_xray(1000, 820, seed=7)
    reduced = decode_image(jpeg_bytes(big), reduce_to=200)
    assert reduced.gray.shape == (250, 205) and reduced.size == (1000, 820) and reduced.scale == 4
    turned = decode_image(jpeg_bytes(big, exif_orientation=6), reduce_to=200)  # Pillow's path, the size turned too
    assert turned.gray.shape == (205, 250) and turned.size == (820, 1000) and turned.scale == 4
    for data in (png_bytes(big), dicom_bytes(big.astype(np.uint16) * 16, bits_stored=12)):
        d = decode_image(data, reduce_to=200)  # only JPEGs decode at reduced scale
        assert d.gray.shape == d.size == (1000, 820) and d.scale == 1
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(big.astype(np.uint16) * 16, bits_stored=12)))
    d = decode_image(ds)
    assert d.size == (1000, 820) and d.scale == 1
    gray, context = pio.read_image_with_context(jpeg_bytes(big), reduce_to=200)
    assert np.array_equal(gray, reduced.gray) and context.format == "JPEG"


def test_a_half_imported_pydicom_does_not_make_other_films_unreadable(monkeypatch):
    """While one decoding thread imports pydicom, ``sys.modules`` holds the module without ``Dataset`` yet: a PNG
    decoded meanwhile by another thread must still be read (it was 'could not be read' about every other run)."""
    import sys
    import types

    from pneumoscan.io import images

    monkeypatch.setitem(sys.modules, "pydicom", types.ModuleType("pydicom"))  # mid-import: no attributes yet
    assert images._is_dataset(b"\x89PNG") is False
    assert images._is_dataset(np.zeros((4, 4), np.uint8)) is False
