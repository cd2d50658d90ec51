"""The server's scope gate and drift check: OUT_OF_SCOPE results in the API (pixels and DICOM header), the rolling
drift window behind ``GET /api/v1/drift``, and its authentication.

A tiny untrained seed-cnn at 64 px, with a reference built from its own features on synthetic films (so the whole
module runs in seconds).
"""

from __future__ import annotations

import dataclasses
import io
import threading
import warnings

import numpy as np
import pydicom
import pytest
import torch

from imagefactory import dicom_bytes, png_bytes
from modelfactory import checkpoint_meta, randomize_batchnorm
from pneumoscan.gate.drift import MIN_IMAGES, DriftResult
from pneumoscan.inference.predictor import Predictor
from pneumoscan.models import create_model
from pneumoscan.onboarding.reference_builder import build_reference
from pneumoscan.serve import ServeSettings, create_app
from pneumoscan.serve.monitor import DriftWindow
from resultfactory import scored, unread

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

SIZE = 64
TOKEN = "scope-token-0123456789abcdef"


def _film(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A film-like ``(size, size) uint8``: a chest of random size, place and brightness over a dark background."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    cy, cx = size / 2 + rng.normal(0, 2), size / 2 + rng.normal(0, 2)
    ry, rx = size * rng.uniform(0.36, 0.46), size * rng.uniform(0.34, 0.44)
    chest = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 < 1
    img = np.where(chest, rng.uniform(90, 130), rng.uniform(5, 25))
    img = img + rng.uniform(60, 110) * np.exp(-(((x - cx) / (0.05 * size)) ** 2))  # spine
    img = img + rng.normal(0, 2.5, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _shifted(film: np.ndarray) -> np.ndarray:
    """The same film from a site that exposes differently: washed out, low contrast."""
    return np.clip(film.astype(np.float64) * 0.6 + 90, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model_and_reference():
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model("seed-cnn"))
    meta = checkpoint_meta("seed-cnn", SIZE, threshold=0.5, temperature=1.0)
    rng = np.random.default_rng(0)
    films = np.stack([_film(rng) for _ in range(500)])
    spec = Predictor.from_model(model, meta).preprocessing
    ref = build_reference(model, films, np.arange(300), np.arange(300, 500), spec, bank_size=300)
    return model, meta, ref, films


@pytest.fixture(scope="module")
def gated(model_and_reference):
    """The predictor with its reference as built: metadata, pixel and feature checks."""
    model, meta, ref, _ = model_and_reference
    return Predictor.from_model(model, meta, reference=ref)


@pytest.fixture(scope="module")
def drifting(model_and_reference):
    """The same model with the feature cut-off opened wide, so that a shifted site's films stay in scope and reach
    the drift window (an untrained network's features are too alike for its own cut-off to mean much)."""
    model, meta, ref, _ = model_and_reference
    return Predictor.from_model(model, meta, reference=dataclasses.replace(ref, knn_cut=2.0))


def _post(client, files, headers=None, **params):
    query = "&".join(f"{k}={str(v).lower()}" for k, v in params.items())
    return client.post("/api/v1/predict" + (f"?{query}" if query else ""), headers=headers,
                       files=[("files", (name, data, "application/octet-stream")) for name, data in files])


def _dicom(film: np.ndarray, **tags: str) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(film, bits=8)))
    for key, value in tags.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# --------------------------------------------------------------------------- the gate in POST /api/v1/predict


def test_out_of_scope_images_are_not_assessed_beside_a_normal_result(gated, model_and_reference):
    films = model_and_reference[3]
    good = films[0]  # a bank film: in scope by every check
    client = TestClient(create_app(gated))
    r = _post(client, [
        ("blank.png", png_bytes(np.full((200, 160), 128, np.uint8))),
        ("good.png", png_bytes(good)),
        ("adult.dcm", _dicom(good, PatientAge="081Y")),
        ("lateral.dcm", _dicom(good, ViewPosition="LL")),
        ("child.dcm", _dicom(good, PatientAge="004Y", ViewPosition="PA")),
    ], heatmap=True, preview=True)
    assert r.status_code == 200, r.text
    blank, ok, adult, lateral, child = r.json()["results"]
    expected = {"blank.png": "blank or uniform image", "adult.dcm": "adult patient (DICOM PatientAge 081Y)",
                "lateral.dcm": "lateral view (DICOM ViewPosition LL)"}
    for entry in (blank, adult, lateral):
        assert entry["ok"] is True and entry["in_scope"] is False
        assert entry["decision"] == "OUT_OF_SCOPE" and entry["positive"] is False
        assert entry["scope_reason"] == expected[entry["filename"]]
        assert 0.0 <= entry["probability"] <= 1.0  # kept for audit
        assert entry["rank"] is None and "heatmap_png" not in entry and entry["image_png"].startswith("data:image/png")
    for entry in (ok, child):
        assert entry["in_scope"] is True and entry["scope_reason"] == ""
        assert entry["decision"] in ("PNEUMONIA", "NORMAL") and entry["positive"] == (entry["decision"] == "PNEUMONIA")
        assert entry["heatmap_png"].startswith("data:image/png")
    assert sorted((ok["rank"], child["rank"])) == [1, 2]
    # Same pixels, same pass: the DICOM header is the only difference, and the probability is the same.
    assert adult["probability"] == pytest.approx(child["probability"], abs=1e-9)


def test_gated_pass_without_heatmap_matches_predict(gated, model_and_reference):
    films = model_and_reference[3]
    client = TestClient(create_app(gated))
    r = _post(client, [("a.png", png_bytes(films[1])), ("flat.png", png_bytes(np.zeros((100, 100), np.uint8)))])
    a, flat = r.json()["results"]
    expected = gated.predict([films[1], np.zeros((100, 100), np.uint8)])
    assert a["probability"] == pytest.approx(expected[0].probability) and a["decision"] == expected[0].label
    assert flat["decision"] == expected[1].label == "OUT_OF_SCOPE" and flat["scope_reason"] == expected[1].scope_reason


def test_only_out_of_scope_images_still_answer_200(gated):
    r = _post(TestClient(create_app(gated)), [("blank.png", png_bytes(np.full((90, 90), 255, np.uint8)))])
    assert r.status_code == 200
    (entry,) = r.json()["results"]
    assert entry["decision"] == "OUT_OF_SCOPE" and entry["rank"] is None


# --------------------------------------------------------------------------- GET /api/v1/drift


def test_drift_unavailable_without_a_reference(tiny_checkpoint):
    client = TestClient(create_app(Predictor.from_checkpoint(tiny_checkpoint)))
    d = client.get("/api/v1/drift").json()
    assert d["available"] is False and d["shifted"] is None and "no reference" in d["reason"]
    assert d["window"] == 200 and d["n_images"] == 0


def test_drift_window_fills_then_judges_and_rolls(drifting):
    settings = ServeSettings(max_files=64, drift_window=60)
    client = TestClient(create_app(drifting, settings))
    rng = np.random.default_rng(7)  # new films from the reference's own population
    films = [_film(rng) for _ in range(60)]

    d = client.get("/api/v1/drift").json()
    assert d["available"] is False and d["n_images"] == 0 and f"0 of {MIN_IMAGES}" in d["reason"]

    r = _post(client, [(f"f{i}.png", png_bytes(f)) for i, f in enumerate(films[:30])]
              + [("blank.png", png_bytes(np.full((80, 80), 200, np.uint8)))])
    assert r.status_code == 200 and sum(e["in_scope"] for e in r.json()["results"]) == 30
    d = client.get("/api/v1/drift").json()
    assert d["available"] is False and d["n_images"] == 30 and f"30 of {MIN_IMAGES}" in d["reason"]
    assert d["recent"] == {"analysed": 31, "out_of_scope": 1}  # the blank page never enters the window

    _post(client, [(f"g{i}.png", png_bytes(f)) for i, f in enumerate(films[30:])])
    d = client.get("/api/v1/drift").json()
    assert d["available"] is True and d["reason"] == "" and d["n_images"] == 60 == d["window"] == d["n_tested"]
    assert d["shifted"] is False and d["statistic"] <= d["threshold"]
    assert set(d) >= {"features_component", "intensity_component", "alpha", "method", "n_used"}
    assert client.get("/api/v1/drift").json() == d  # cached until the window changes

    # A site that exposes differently: as its films replace the old ones, the window turns.
    r = _post(client, [(f"s{i}.png", png_bytes(_shifted(f))) for i, f in enumerate(films)])
    assert all(e["in_scope"] for e in r.json()["results"])
    d = client.get("/api/v1/drift").json()
    assert d["available"] is True and d["shifted"] is True and d["statistic"] > d["threshold"]
    assert d["n_images"] == 60


def test_drift_needs_the_token(drifting):
    client = TestClient(create_app(drifting, ServeSettings(token=TOKEN)))
    r = client.get("/api/v1/drift")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert client.get("/api/v1/drift", headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
    ok = client.get("/api/v1/drift", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json()["available"] is False


def test_drift_window_setting_is_checked():
    with pytest.raises(ValueError, match="drift_window"):
        ServeSettings(drift_window=MIN_IMAGES - 1)
    assert ServeSettings().drift_window == 200


# --------------------------------------------------------------------------- the window itself


class _CountingCheck:
    """A drift check that records the batch sizes it was asked about."""

    def __init__(self):
        self.sizes = []

    def test(self, features, descriptors, flag_rate=None):
        assert len(features) == len(descriptors)
        self.sizes.append(len(features))
        return DriftResult(False, 0.1, 1.0, len(features), len(features), 0.1, 0.0, 0.05)


def test_window_tests_in_steps_while_filling_and_caches():
    check = _CountingCheck()
    window = DriftWindow(check, size=120)
    film = scored("x.png", 0.3, features=np.ones(8, np.float32), descriptor=np.zeros(7, np.float32))
    for _ in range(75):
        window.record(film)
    first = window.report()
    assert first["n_images"] == 75 and first["n_tested"] == 50 and window.report() is first
    assert check.sizes == [50]
    for _ in range(100):
        window.record(film)
    window.record(scored("blank.png", 0.3, in_scope=False, scope_reason="blank"))
    report = window.report()
    assert report["n_tested"] == 120 and len(window) == 120 and report["recent"]["out_of_scope"] == 1
    assert check.sizes == [50, 120]
    window.record(unread("bad.png"))  # a file not read is not an analysed image: nothing changes
    assert window.report() is report and check.sizes == [50, 120]


def test_window_is_thread_safe():
    window = DriftWindow(_CountingCheck(), size=MIN_IMAGES)
    film = scored("x.png", 0.7, features=np.ones(4, np.float32), descriptor=np.zeros(7, np.float32))

    def add():
        for _ in range(500):
            window.record(film)
            window.report()

    threads = [threading.Thread(target=add) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = window.report()
    assert len(window) == MIN_IMAGES and report["available"] and report["recent"]["analysed"] == MIN_IMAGES


def test_window_without_a_check_keeps_nothing():
    window = DriftWindow(None, size=MIN_IMAGES)
    window.record(scored("x.png", 0.7, features=np.ones(4), descriptor=np.zeros(7)))
    assert len(window) == 0 and window.report()["available"] is False
