"""THE one path from pixels to model input: the training cache and the Predictor make the same input from the
same file, to the last bit, and so give the same probabilities; evaluation and prediction agree per image."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from imagefactory import dicom_bytes, jpeg_bytes, png_bytes, synthetic_xray
from modelfactory import make_checkpoint
from pneumoscan.checkpoint import load_checkpoint
from pneumoscan.data import Record, build_cache
from pneumoscan.io import read_image
from pneumoscan.inference.predictor import Predictor
from pneumoscan.inference.files import decode_item
from pneumoscan.preprocessing import (
    Preprocessing,
    check_model_input,
    decode_side,
    pipeline_fingerprint,
    preprocess,
    resize_for_model,
    to_model_input,
)
from pneumoscan.inference.scoring import model_from_checkpoint, score_cached


def _odd_files(folder: Path) -> list[Path]:
    """An 8-bit JPEG, a 16-bit PNG and a 12-bit MONOCHROME1 DICOM, none square, none at the model's size."""
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "a.jpeg": jpeg_bytes(synthetic_xray(301, 257, seed=1)),
        "b.png": png_bytes(synthetic_xray(190, 333, seed=2).astype(np.uint16) * 257),
        "c.dcm": dicom_bytes(synthetic_xray(222, 181, seed=3).astype(np.uint16) * 16, bits_stored=12,
                             photometric="MONOCHROME1", window=(2000, 3500)),
        # Large enough for a reduced-scale JPEG decode (>= 4x the 96-px square on both sides): grey, and colour
        # turned by EXIF.
        "d.jpeg": jpeg_bytes(synthetic_xray(901, 777, seed=4)),
        "e.jpeg": jpeg_bytes(np.repeat(synthetic_xray(803, 1021, seed=5)[..., None], 3, axis=2), exif_orientation=6),
    }
    out = []
    for name, data in files.items():
        (folder / name).write_bytes(data)
        out.append(folder / name)
    return out


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("m") / "m.safetensors", "seed-cnn", 96, threshold=0.5,
                           temperature=1.3)


def test_cache_and_predictor_make_the_same_input_and_probabilities(ckpt, tmp_path):
    files = _odd_files(tmp_path / "img")
    c = load_checkpoint(ckpt)
    spec = c.info.preprocessing
    cache = build_cache([Record(str(p), 0, p.stem, None) for p in files], spec, tmp_path / "cache", progress=False)
    assert len(cache) == len(files)
    for row, path in enumerate(files):
        # The cached square is exactly what the predictor feeds the model.
        square = decode_item(str(path), spec, raise_errors=True).square
        assert np.array_equal(cache.images[row], square)
        assert np.array_equal(square, resize_for_model(read_image(path, reduce_to=decode_side(spec)), spec))
    # The large JPEGs were decoded at reduced scale (1/4: both sides still >= 2 x 96; e.jpeg turned upright).
    assert [read_image(p, reduce_to=decode_side(spec)).shape for p in files[3:]] == [(226, 195), (256, 201)]
    assert not np.array_equal(cache.images[3], resize_for_model(read_image(files[3]), spec))
    model = model_from_checkpoint(c)
    via_cache = score_cached(model, cache.images, np.arange(len(files)), spec, temperature=c.info.temperature)
    via_predictor = Predictor.from_checkpoint(ckpt).predict_proba(files)
    np.testing.assert_allclose(via_predictor, via_cache, rtol=0, atol=1e-6)


def test_evaluate_and_predict_give_the_same_probabilities(ckpt, tmp_path):
    from pneumoscan.evaluation import evaluate

    root = tmp_path / "data"
    paths = _odd_files(root / "NORMAL") + _odd_files(root / "PNEUMONIA")
    for i, p in enumerate(paths):  # distinct patients, distinct content per class
        p.rename(p.with_name(f"x{i}{p.suffix}"))
    paths = sorted(root.rglob("x*"))
    evaluate([ckpt], root, tmp_path / "eval", cache_dir=tmp_path / "cache", bootstrap_samples=10)
    with open(tmp_path / "eval" / "scores.csv", newline="") as fh:
        evaluated = {Path(r["path"]).name: float(r["probability"]) for r in csv.DictReader(fh)}
    predicted = dict(zip((p.name for p in paths), Predictor.from_checkpoint(ckpt).predict_proba(paths)))
    assert set(evaluated) == set(predicted) and len(predicted) == 10
    for name, p in predicted.items():
        assert math.isclose(evaluated[name], p, abs_tol=1e-6), (name, evaluated[name], p)  # scores.csv keeps 6 decimals


def test_resize_follows_the_spec_and_same_size_is_untouched():
    img = synthetic_xray(150, 120)
    spec = Preprocessing(image_size=64)
    out = resize_for_model(img, spec)
    assert out.shape == (64, 64) and out.dtype == np.uint8
    same = synthetic_xray(64, 64)
    assert resize_for_model(same, spec) is same
    with pytest.raises(ValueError, match="interpolation"):
        Preprocessing(image_size=64, interpolation="nearest")
    assert Preprocessing.from_dict({"image_size": 64, "mean": 0.5, "std": 0.25, "channels": 1, "resize": "squash"}) \
        == Preprocessing(image_size=64)  # checkpoints written before 'interpolation' existed


def test_model_entry_refuses_input_made_another_way():
    spec = Preprocessing(image_size=64, mean=0.5, std=0.25)
    good = to_model_input([synthetic_xray(100, 90), synthetic_xray(64, 64)], spec)
    check_model_input(good, spec)
    assert torch.equal(good, preprocess(np.stack([resize_for_model(synthetic_xray(100, 90), spec),
                                                  synthetic_xray(64, 64)]), spec))
    with pytest.raises(ValueError, match="normalised twice|outside"):
        check_model_input((good - 0.5) / 0.25, spec)  # normalised a second time
    with pytest.raises(ValueError, match="outside"):
        check_model_input(good * 0 + 255.0, spec)  # raw pixels
    with pytest.raises(ValueError, match="float32"):
        check_model_input(good.double(), spec)
    with pytest.raises(ValueError, match="float32"):
        check_model_input(good[:, :, :32], spec)


def test_pipeline_fingerprint_is_stable_and_keys_the_cache(tmp_path):
    fp = pipeline_fingerprint()
    assert len(fp) == 16 and fp == pipeline_fingerprint()
    img = tmp_path / "a.png"
    img.write_bytes(png_bytes(synthetic_xray(80, 80)))
    recs = [Record(str(img), 0, "a", None)]
    a = build_cache(recs, 64, tmp_path / "c", progress=False)
    b = build_cache(recs, Preprocessing(image_size=64, mean=0.1, std=0.3), tmp_path / "c", progress=False)
    assert a.key == b.key  # normalisation is applied per batch, not cached
    pipeline_fingerprint.cache_clear()
    try:
        import pneumoscan.data.cache as cache_mod

        original = cache_mod.pipeline_fingerprint
        cache_mod.pipeline_fingerprint = lambda: "0" * 16  # as if the decoding code had changed
        try:
            assert build_cache(recs, 64, tmp_path / "c", progress=False).key != a.key
        finally:
            cache_mod.pipeline_fingerprint = original
    finally:
        pipeline_fingerprint.cache_clear()


def test_one_film_has_one_score_on_every_path(ckpt, tmp_path):
    """A large JPEG is scored from a reduced-scale decode; paths that also need the full film (the heatmap, the
    server's analysis with previews and heatmaps, the viewer's re-render) must score that same square."""
    from fastapi.testclient import TestClient

    from pneumoscan.io import read_image_with_context
    from pneumoscan.serve import ServeSettings, create_app

    files = _odd_files(tmp_path / "img")[3:]  # d.jpeg and e.jpeg: reduced-scale decodes
    p = Predictor.from_checkpoint(ckpt, backend="torch")
    plain = [r.probability for r in p.score_files(files)]
    with_maps = [r.probability for r in p.score_files(files, heatmaps=tmp_path / "maps")]
    explained = [p.explain(f)[0] for f in files]
    np.testing.assert_allclose(with_maps, plain, rtol=0, atol=1e-6)
    np.testing.assert_allclose(explained, plain, rtol=0, atol=1e-6)
    for f, prob in zip(files, plain):
        gray, _ = read_image_with_context(f)
        film = p.read(str(f), full=True)  # the film at its own size, and the square every path scores
        assert np.array_equal(film.gray, gray)
        assert np.array_equal(film.square, decode_item(str(f), p.preprocessing, raise_errors=True).square)
        assert not np.array_equal(film.square, resize_for_model(gray, p.preprocessing))  # the case of this test
        assert math.isclose(p.assess(film).probability, prob, abs_tol=1e-6)
        assert math.isclose(p.assess(film, explain=True).probability, prob, abs_tol=1e-6)
    client = TestClient(create_app(p, ServeSettings()))
    for f, prob in zip(files, plain):
        body = {"files": (f.name, f.read_bytes(), "image/jpeg")}
        page = client.post("/api/v1/predict?heatmap=true&preview=true", files=body).json()["results"][0]
        assert math.isclose(page["probability"], prob, abs_tol=1e-6), (f.name, page["probability"], prob)
        viewer = client.post("/api/v1/explain?heatmap=true", files=body).json()["results"][0]
        assert math.isclose(viewer["probability"], prob, abs_tol=1e-6), (f.name, viewer, prob)


def test_the_decode_margin_is_part_of_the_stored_spec(tmp_path):
    from imagefactory import jpeg_bytes

    from pneumoscan.preprocessing import DECODE_MARGIN, read_film

    assert Preprocessing().decode_margin == DECODE_MARGIN == 2
    assert Preprocessing().to_dict()["decode_margin"] == 2  # written into every new checkpoint
    old = {k: v for k, v in Preprocessing(image_size=96).to_dict().items() if k != "decode_margin"}
    assert Preprocessing.from_dict(old) == Preprocessing(image_size=96)  # a checkpoint from before: the same margin
    with pytest.raises(ValueError, match="decode_margin"):
        Preprocessing(decode_margin=0)
    assert decode_side(Preprocessing(image_size=64, decode_margin=3)) == 192
    path = tmp_path / "big.jpeg"
    path.write_bytes(jpeg_bytes(synthetic_xray(1400, 1200, seed=1)))
    two, four = Preprocessing(image_size=64), Preprocessing(image_size=64, decode_margin=4)
    # the margin decides how far a large JPEG is reduced before it is squeezed: it is part of what the model saw
    assert not np.array_equal(read_film(path, two).square, read_film(path, four).square)
    full = read_film(path, two, full=True)
    assert full.gray.shape == (1400, 1200) and np.array_equal(full.square, read_film(path, two).square)


def test_read_film_keeps_the_one_decode_or_the_film_in_full_and_always_its_own_size(tmp_path):
    from pneumoscan.preprocessing import read_film

    spec = Preprocessing(image_size=64)  # decode side 128: a 1100 x 900 JPEG is decoded at 1/4 scale
    path = tmp_path / "big.jpeg"
    path.write_bytes(jpeg_bytes(synthetic_xray(1100, 900, seed=3)))
    plain = read_film(path, spec)
    assert plain.gray is None and plain.size == (1100, 900) and plain.scale == 4
    kept = read_film(path, spec, decoded=True)  # the decode the square came from, nothing decoded again
    assert kept.gray.shape == (275, 225) and kept.size == (1100, 900) and kept.scale == 4
    assert np.array_equal(kept.square, plain.square) and np.array_equal(resize_for_model(kept.gray, spec), kept.square)
    full = read_film(path, spec, full=True)
    assert full.gray.shape == (1100, 900) and full.size == (1100, 900) and np.array_equal(full.square, plain.square)
    with pytest.raises(ValueError, match="not both"):
        read_film(path, spec, full=True, decoded=True)
    small = tmp_path / "small.png"  # nothing to reduce: the film itself, scale 1
    small.write_bytes(png_bytes(synthetic_xray(200, 150, seed=4)))
    film = read_film(small, spec, decoded=True)
    assert film.gray.shape == film.size == (200, 150) and film.scale == 1
    array = synthetic_xray(90, 70, seed=5)
    assert read_film(array, spec, decoded=True).gray is array and read_film(array, spec).size == (90, 70)
