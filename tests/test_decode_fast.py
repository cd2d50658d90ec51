"""The fast JPEG path (:mod:`pneumoscan.io.jpeg`, simplejpeg): the same pixels as Pillow on every file it takes, Pillow
on every file it must not take (and on every error it meets), the same verdict on damaged files, the pixel limit
before any decode; and the server decoding an upload once."""

from __future__ import annotations

import io
import math
import random

import numpy as np
import pytest
from PIL import Image

import fuzzing
from imagefactory import jpeg_bytes, png_bytes, synthetic_xray
from pneumoscan.io import CorruptImageError, ImageError, ImageTooLargeError, read_image
from pneumoscan.io import images as images_mod
from pneumoscan.io import jpeg as jpeg_mod
from pneumoscan.io.images import decode_image
from pneumoscan.io.jpeg import FAST_FRAMES, draft_scale, frame_of

pytestmark = pytest.mark.skipif(not jpeg_mod.fast_available(), reason="simplejpeg is not installed")


@pytest.fixture
def fast_calls(monkeypatch):
    """Counts the fast decoder's calls (it still decodes)."""
    calls: list[int] = []
    real = images_mod.fast_luma

    def counting(data, frame, scale):
        calls.append(scale)
        return real(data, frame, scale)

    monkeypatch.setattr(images_mod, "fast_luma", counting)
    return calls


def _pillow(data: bytes, reduce_to: int | None, monkeypatch) -> tuple[np.ndarray, tuple[int, int], int]:
    """The decode with Pillow alone (as before the fast path, or without simplejpeg)."""
    with monkeypatch.context() as m:
        m.setattr(images_mod, "fast_available", lambda: False)
        d = decode_image(data, reduce_to=reduce_to)
    return d.gray, d.size, d.scale


def _colour(h: int, w: int, seed: int) -> np.ndarray:
    """A film with real chroma (a tinted gradient), so that luma read directly and luma from RGB differ."""
    g = synthetic_xray(h, w, seed=seed).astype(np.int16)
    tint = np.linspace(-40, 40, w, dtype=np.int16)[None, :]
    return np.clip(np.stack([g + tint, g, g - tint], axis=2), 0, 255).astype(np.uint8)


def _progressive(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90, progressive=True)
    return buf.getvalue()


def _with_adobe(data: bytes, transform: int = 1) -> bytes:
    """``data`` with an Adobe APP14 segment after SOI (the colour transform flag libjpeg reads)."""
    body = b"Adobe" + (100).to_bytes(2, "big") + b"\0\0\0\0" + bytes([transform])
    return data[:2] + b"\xff\xee" + (len(body) + 2).to_bytes(2, "big") + body + data[2:]


def _sof_patched(data: bytes, *, marker: int | None = None, precision: int | None = None) -> bytes:
    """``data`` with its frame header's marker or precision changed (a 12-bit, lossless or arithmetic-coded frame
    as far as a header reader can tell)."""
    out = bytearray(data)
    i = 2
    while out[i + 1] not in (0xC0, 0xC1, 0xC2):
        i += 2 + int.from_bytes(out[i + 2:i + 4], "big")
    if marker is not None:
        out[i + 1] = marker
    if precision is not None:
        out[i + 4] = precision
    return bytes(out)


# ---------------------------------------------------------------- the same pixels


@pytest.mark.parametrize("h, w, reduce_to, scale", [
    (1000, 820, 200, 4), (1001, 1803, 448, 2), (1800, 1795, 224, 8), (613, 999, 300, 2), (300, 240, None, 1),
    (901, 897, 448, 2),
])
def test_grey_films_decode_to_pillows_pixels_at_every_scale(h, w, reduce_to, scale, fast_calls, monkeypatch):
    for data in (jpeg_bytes(synthetic_xray(h, w, seed=h)), _progressive(synthetic_xray(h, w, seed=w))):
        d = decode_image(data, reduce_to=reduce_to)
        gray, size, pil_scale = _pillow(data, reduce_to, monkeypatch)
        assert d.scale == pil_scale == scale and d.size == size == (h, w)
        assert d.gray.shape == gray.shape == (math.ceil(h / scale), math.ceil(w / scale))
        assert np.array_equal(d.gray, gray) and d.gray.flags.c_contiguous
    assert fast_calls == [scale, scale]


def test_a_colour_film_is_fast_only_where_pillow_reads_its_luma(fast_calls, monkeypatch):
    rgb = _colour(1203, 1001, seed=3)
    for subsampling in (0, 2):  # 4:4:4 and 4:2:0 (odd sizes: chroma rounding at the edges)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="JPEG", quality=90, subsampling=subsampling)
        data = buf.getvalue()
        reduced = decode_image(data, reduce_to=448)  # a DCT-domain decode reads the luma: fast
        assert np.array_equal(reduced.gray, _pillow(data, 448, monkeypatch)[0]) and reduced.scale == 2
        whole = decode_image(data)  # at full size Pillow computes luma from RGB: Pillow
        assert np.array_equal(whole.gray, _pillow(data, None, monkeypatch)[0])
    assert fast_calls == [2, 2]


@pytest.mark.shared_data
def test_the_full_resolution_samples_decode_to_pillows_pixels(fullres_samples, fast_calls, monkeypatch):
    for path in fullres_samples[::4]:
        data = path.read_bytes()
        assert np.array_equal(decode_image(data, reduce_to=448).gray, _pillow(data, 448, monkeypatch)[0]), path
    assert fast_calls, "the samples are the fast path's case"


# ---------------------------------------------------------------- what goes to Pillow


@pytest.mark.parametrize("case", ["cmyk", "exif_turn", "adobe", "png", "rgb_full_size"])
def test_files_the_fast_path_must_not_take_go_to_pillow(case, fast_calls, monkeypatch):
    grey = synthetic_xray(1000, 820, seed=5)
    data = {"cmyk": lambda: jpeg_bytes(np.repeat(grey[..., None], 3, axis=2), mode="CMYK"),
            "exif_turn": lambda: jpeg_bytes(grey, exif_orientation=6),
            "adobe": lambda: _with_adobe(jpeg_bytes(_colour(1000, 820, seed=5))),
            "png": lambda: png_bytes(grey),
            "rgb_full_size": lambda: jpeg_bytes(_colour(300, 240, seed=5))}[case]()
    reduce_to = None if case == "rgb_full_size" else 200
    d = decode_image(data, reduce_to=reduce_to)
    gray, size, scale = _pillow(data, reduce_to, monkeypatch)
    assert np.array_equal(d.gray, gray) and d.size == size and d.scale == scale
    assert fast_calls == []
    if case == "exif_turn":  # the size is the film's, turned
        assert d.size == (820, 1000) and d.gray.shape == (205, 250)


@pytest.mark.parametrize("marker, precision", [(0xC3, None), (0xC9, None), (0xCA, None), (None, 12)])
def test_twelve_bit_lossless_and_arithmetic_frames_go_to_pillow_and_fail_only_as_the_files_error(
        marker, precision, fast_calls, tmp_path):
    path = tmp_path / "odd frame.jpg"
    path.write_bytes(_sof_patched(jpeg_bytes(synthetic_xray(300, 240, seed=1)), marker=marker, precision=precision))
    frame = frame_of(path.read_bytes())
    assert frame is not None and (frame.marker not in FAST_FRAMES or frame.precision != 8)
    try:
        assert read_image(path).ndim == 2  # whatever Pillow makes of it
    except ImageError as exc:
        assert "odd frame.jpg" in str(exc)
    assert fast_calls == []


def test_without_simplejpeg_pillow_decodes_everything(monkeypatch):
    data = jpeg_bytes(synthetic_xray(1000, 820, seed=2))
    fast = decode_image(data, reduce_to=200)
    monkeypatch.setattr(jpeg_mod, "_simplejpeg", lambda: None)
    assert not jpeg_mod.fast_available() and jpeg_mod.decoder_version() == "none"
    slow = decode_image(data, reduce_to=200)
    assert np.array_equal(fast.gray, slow.gray) and (fast.size, fast.scale) == (slow.size, slow.scale)


def test_a_fast_decoder_error_leaves_the_file_to_pillow(monkeypatch):
    data = jpeg_bytes(synthetic_xray(1000, 820, seed=4))
    expected = _pillow(data, 200, monkeypatch)[0]

    def broken(*args, **kwargs):
        raise ValueError("simulated decoder failure")

    monkeypatch.setattr(images_mod, "fast_luma", broken)
    assert np.array_equal(decode_image(data, reduce_to=200).gray, expected)


# ---------------------------------------------------------------- bad input, limits


def test_a_truncated_or_corrupt_jpeg_is_the_files_clear_error(tmp_path, fast_calls):
    data = jpeg_bytes(synthetic_xray(1000, 820, seed=6))
    cut = tmp_path / "cut.jpeg"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptImageError, match="cut.jpeg.*(truncated|damaged)"):
        read_image(cut, reduce_to=200)
    scan = data.index(b"\xff\xda")
    junk = tmp_path / "junk.jpeg"
    junk.write_bytes(data[:scan + 40] + bytes(random.Random(1).randrange(256) for _ in range(4000)))
    with pytest.raises(ImageError, match="junk.jpeg"):
        read_image(junk, reduce_to=200)
    assert fast_calls == [4, 4]  # tried, refused by libjpeg's strict mode, then refused by Pillow too


def test_damaged_jpegs_get_the_same_verdict_and_pixels_with_and_without_the_fast_path(monkeypatch):
    """A seeded sweep of the fuzzer's JPEG cases: pixels or the error class, identical either way."""
    seeds = [n for n in fuzzing.SEED_NAMES if fuzzing.SEED_FORMATS[n] == "JPEG"]
    rng = random.Random(27)
    for k in range(400):
        seed = seeds[k % len(seeds)]
        data = fuzzing.make_case(seed, [rng.choice(fuzzing.mutations_for(seed))], rng.randrange(1 << 30))
        outcome = []
        for fast in (True, False):
            with monkeypatch.context() as m:
                if not fast:
                    m.setattr(images_mod, "fast_available", lambda: False)
                try:
                    outcome.append(read_image(data, name="case.jpeg", max_pixels=fuzzing.MAX_PIXELS).tobytes())
                except ImageError as exc:
                    assert "case.jpeg" in str(exc)
                    outcome.append(type(exc).__name__)
        assert outcome[0] == outcome[1], (seed, k)


def test_the_pixel_limit_is_checked_from_the_header_before_any_decode(monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("decoded a film over the pixel limit")

    monkeypatch.setattr(images_mod, "fast_luma", never)
    with pytest.raises(ImageTooLargeError, match="big.jpeg"):
        read_image(jpeg_bytes(synthetic_xray(1000, 820, seed=2)), name="big.jpeg", max_pixels=500_000, reduce_to=200)


# ---------------------------------------------------------------- the header reader and the scale rule


def test_frame_of_reads_the_frame_header_and_gives_up_on_anything_else():
    data = jpeg_bytes(synthetic_xray(300, 240, seed=1))
    assert frame_of(data) == (0xC0, 8, 300, 240, 1)
    assert frame_of(_progressive(_colour(130, 97, seed=1))) == (0xC2, 8, 130, 97, 3)
    assert frame_of(data[:2] + b"\xff\xff" + data[2:]).marker == 0xC0  # a fill byte
    for bad in (b"", b"\xff\xd8", b"\x89PNG\r\n\x1a\n", data[:2] + b"\xff\xe0\x00\x01", data[:2] + b"\x00\x00",
                data[:2] + b"\xff\xda\x00\x08" + data[2:], data[:data.index(b"\xff\xc0") + 6]):
        assert frame_of(bad) is None, bad[:12]


def test_draft_scale_is_the_scale_pillows_draft_picks():
    for w, h in [(1000, 820), (3600, 2000), (896, 896), (895, 2000), (3584, 3585), (3583, 4000), (100, 100)]:
        data = jpeg_bytes(np.zeros((h, w), np.uint8), quality=50)
        for side in (112, 224, 448):
            scale = draft_scale(w, h, side)
            if scale == 1:  # no reduction by at least 2 keeps both sides >= side: the decode is not drafted
                assert min(w // side, h // side) < 2
                continue
            im = Image.open(io.BytesIO(data))
            im.draft("L", (side, side))
            assert im.size == (math.ceil(w / scale), math.ceil(h / scale)), (w, h, side)
    assert draft_scale(4000, 3000, None) == 1


# ---------------------------------------------------------------- the server decodes an upload once


def test_the_server_decodes_a_large_jpeg_once(predictor, monkeypatch):
    """``/predict`` (previews, heatmap) and the viewer's ``/explain`` without the film: one decode of the upload, its
    square the one every other path scores, its size the file's; the film at full resolution is decoded in full."""
    from fastapi.testclient import TestClient

    from pneumoscan.serve import ServeSettings, create_app

    data = jpeg_bytes(synthetic_xray(1100, 900, seed=9))  # 64 px model: decoded at 1/4 scale for its square
    expected = predictor.score_files([data])[0].probability
    decodes: list[int | None] = []
    real = images_mod._decode_raster

    def counting(fp, im, fmt, reduce_to, log_label):
        decodes.append(reduce_to)
        return real(fp, im, fmt, reduce_to, log_label)

    monkeypatch.setattr(images_mod, "_decode_raster", counting)
    client = TestClient(create_app(predictor, ServeSettings()))
    body = {"files": ("film.jpeg", data, "image/jpeg")}
    for query, n in (("predict?heatmap=true&preview=true", 1), ("explain?film=false&heatmap=true", 1),
                     ("explain?film=true", 1), ("explain?film=false", 1)):
        decodes.clear()
        r = client.post("/api/v1/" + query, files=body)
        assert r.status_code == 200, r.text
        entry = r.json()["results"][0]
        assert len(decodes) == n, (query, decodes)
        assert (entry["width"], entry["height"]) == (900, 1100)
        if "heatmap=true" in query:
            assert entry["probability"] == pytest.approx(expected, abs=1e-6)
        if query.startswith("predict"):
            preview = Image.open(io.BytesIO(__import__("base64").b64decode(entry["image_png"].split(",", 1)[1])))
            assert abs(preview.width / preview.height - 900 / 1100) < 0.02
        if query == "explain?film=true":
            assert (entry["film_width"], entry["film_height"]) == (900, 1100) and decodes == [None]
