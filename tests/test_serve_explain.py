"""``POST /api/v1/explain`` (the viewer's full-resolution film and heatmap) and the pictures every predict
entry carries (thumbnail, preview, overlay, the map alone)."""

from __future__ import annotations

import base64
import io
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
from imagefactory import dicom_bytes, jpeg_bytes, png_bytes, synthetic_xray
from PIL import Image

from pneumoscan.constants import CAUSE_CAVEAT, CAUSE_WORDS, DECISION_WORDS
from pneumoscan.inference.render import render_heat
from pneumoscan.serve import ServeSettings, create_app
from pneumoscan.serve.analysis import (
    FILM_MAX_SIDE,
    THUMBNAIL_SIDE,
    downscale,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

TOKEN = "explain-token-0123456789abcdef"
STRINGS_JS = Path(__file__).resolve().parents[1] / "src/pneumoscan/serve/static/strings.js"


@pytest.fixture
def client(predictor):
    return TestClient(create_app(predictor, ServeSettings(max_request_bytes=4_000_000, max_pixels=20_000_000)))


def _explain(client, name, data, headers=None, **params):
    query = "&".join(f"{k}={str(v).lower()}" for k, v in params.items())
    return client.post("/api/v1/explain" + (f"?{query}" if query else ""), headers=headers or {},
                       files=[("files", (name, data, "application/octet-stream"))])


def _image(uri: str, kind: str = "png") -> Image.Image:
    prefix = f"data:image/{kind};base64,"
    assert uri.startswith(prefix), uri[:40]
    return Image.open(io.BytesIO(base64.b64decode(uri[len(prefix):])))


def _worklist_total(client, headers=None) -> int:
    return client.get("/api/v1/worklist", headers=headers or {}).json()["total"]


def test_jpeg_film_at_full_resolution_and_heatmap_map(client):
    film = synthetic_xray(300, 240, seed=1)
    r = _explain(client, "a.jpeg", jpeg_bytes(film), heatmap=True)
    assert r.status_code == 200, r.text
    body = r.json()
    assert "not a diagnosis" in body["disclaimer"]
    (x,) = body["results"]
    assert x["ok"] and x["format"] == "JPEG" and (x["width"], x["height"]) == (240, 300)
    shown = _image(x["film_png"])
    assert shown.mode == "L" and shown.size == (240, 300) and x["film_scaled"] is False
    assert x["film_max_side"] == FILM_MAX_SIDE
    heat = _image(x["heatmap_map"], "jpeg")
    assert heat.mode == "L" and abs(heat.width / heat.height - 240 / 300) < 0.02
    assert x["decision"] in ("PNEUMONIA", "NORMAL") and 0 <= x["probability"] <= 1 and x["in_scope"]


def test_png_film_is_lossless_and_film_false_sends_only_the_map(client):
    film = synthetic_xray(200, 260, seed=2)
    r = _explain(client, "b.png", png_bytes(film))
    x = r.json()["results"][0]
    assert r.status_code == 200 and "heatmap_map" not in x and "decision" not in x  # no heatmap asked: no model
    assert np.array_equal(np.asarray(_image(x["film_png"])), film)
    r = _explain(client, "b.png", png_bytes(film), heatmap=True, film=False)
    x = r.json()["results"][0]
    assert r.status_code == 200 and "film_png" not in x and x["heatmap_map"].startswith("data:image/jpeg")


def test_dicom_is_decoded_for_the_browser(client):
    stored = (synthetic_xray(320, 280, seed=3).astype(np.uint16) * 16)
    r = _explain(client, "c.dcm", dicom_bytes(stored, bits_stored=12), heatmap=True)
    assert r.status_code == 200, r.text
    x = r.json()["results"][0]
    assert x["format"] == "DICOM" and _image(x["film_png"]).size == (280, 320)
    assert x["heatmap_map"].startswith("data:image/jpeg")


def test_a_large_film_is_capped_and_says_so(predictor):
    big = synthetic_xray(FILM_MAX_SIDE + 400, 1200, seed=4)
    client = TestClient(create_app(predictor, ServeSettings(max_request_bytes=40_000_000, max_pixels=40_000_000)))
    x = _explain(client, "big.png", png_bytes(big)).json()["results"][0]
    shown = _image(x["film_png"])
    assert x["film_scaled"] is True and max(shown.size) == FILM_MAX_SIDE
    assert (x["width"], x["height"]) == (1200, FILM_MAX_SIDE + 400)


@pytest.mark.parametrize("data, status, fragment", [
    (b"this is not an image at all", 415, "not an image"),
    (png_bytes(synthetic_xray(64, 64))[:60], 422, "damaged or incomplete"),
    (b"", 422, "empty"),
])
def test_bad_input_is_a_clear_per_file_error(client, data, status, fragment):
    r = _explain(client, "bad.png", data, heatmap=True)
    assert r.status_code == status, r.text
    x = r.json()["results"][0]
    assert x["ok"] is False and x["error"].startswith("bad.png") and fragment in x["error"]
    assert r.json()["detail"] == x["error"]


def test_exactly_one_file(client):
    jpg = jpeg_bytes(synthetic_xray(100, 100))
    r = client.post("/api/v1/explain", files=[("files", ("a.jpeg", jpg)), ("files", ("b.jpeg", jpg))])
    assert r.status_code == 400 and "exactly one" in r.json()["detail"]
    assert client.post("/api/v1/explain", data={"x": "1"}).status_code in (400, 415)


def test_explain_adds_no_worklist_row_nor_drift_image(client):
    data = jpeg_bytes(synthetic_xray(200, 180, seed=5))
    assert client.post("/api/v1/predict", files=[("files", ("a.jpeg", data))]).status_code == 200
    before = _worklist_total(client)
    drift_before = client.get("/api/v1/drift").json()["recent"]["analysed"]
    assert _explain(client, "a.jpeg", data, heatmap=True).status_code == 200
    assert _explain(client, "junk.png", b"junk").status_code >= 400
    assert _worklist_total(client) == before == 1
    assert client.get("/api/v1/drift").json()["recent"]["analysed"] == drift_before == 1


def test_token_required(predictor):
    client = TestClient(create_app(predictor, ServeSettings(token=TOKEN)))
    data = jpeg_bytes(synthetic_xray(120, 100))
    r = _explain(client, "a.jpeg", data)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert _explain(client, "a.jpeg", data, headers={"Authorization": "Bearer wrong-token-0123456789"}).status_code == 401
    r = _explain(client, "a.jpeg", data, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.json()["results"][0]["film_png"]


def test_out_of_scope_gets_no_heatmap(client):
    blank = np.full((200, 200), 128, np.uint8)
    x = _explain(client, "blank.png", png_bytes(blank), heatmap=True).json()["results"][0]
    assert x["ok"] and x["in_scope"] is False and "heatmap_map" not in x
    assert "out of scope" in x["heatmap_error"]


def test_predict_entries_carry_a_thumbnail_and_the_map_alone(client):
    film = synthetic_xray(700, 560, seed=6)
    r = client.post("/api/v1/predict?heatmap=true&preview=true", files=[("files", ("a.png", png_bytes(film)))])
    x = r.json()["results"][0]
    thumb = _image(x["thumbnail"], "jpeg")
    assert max(thumb.size) == THUMBNAIL_SIDE and abs(thumb.width / thumb.height - 560 / 700) < 0.02
    preview = _image(x["image_png"])
    assert max(preview.size) == 512
    assert _image(x["heatmap_png"]).size == preview.size
    assert _image(x["heatmap_map"], "jpeg").size == preview.size
    r = client.post("/api/v1/predict", files=[("files", ("a.png", png_bytes(film)))])
    x = r.json()["results"][0]
    assert x["thumbnail"].startswith("data:image/jpeg") and "image_png" not in x and "heatmap_map" not in x


def test_downscale_and_render_heat():
    gray = synthetic_xray(1000, 600)
    small = downscale(gray, 512)
    assert small.shape == (512, round(600 * 512 / 1000)) and small.dtype == np.uint8
    assert downscale(gray, 2000) is gray
    heat = np.zeros((1000, 600), np.float32)
    heat[:500] = 1.0
    out = render_heat(heat, max_side=100)
    assert out.shape == (100, 60) and out.dtype == np.uint8 and out[10, 10] == 255 and out[90, 10] == 0


def test_strings_carry_the_one_decision_wording():
    """strings.js says the decisions, the causes and the cause's caveat in the constants' words, in the page's and
    the viewer's strings alike."""
    text = STRINGS_JS.read_text(encoding="utf-8")
    text = re.sub(r'"\s*\+\s*"', "", text)  # a long string written in pieces ("..." +\n "...") is one string
    page, viewer = text[text.index("page: {"):text.index("viewer: {")], text[text.index("viewer: {"):]
    for label, words in DECISION_WORDS.items():
        assert re.search(rf'decision_{label}: "{re.escape(words)}"', viewer), label
        assert re.search(rf'decision{label}: "{re.escape(words)}"', page), label
    assert set(CAUSE_WORDS) == {"BACTERIAL", "VIRAL"}
    for label, words in CAUSE_WORDS.items():
        assert re.search(rf'\bcause_{label}: "{re.escape(words)}"', viewer), label
        assert re.search(rf'\bcause{label}: "{re.escape(words)}"', page), label
    for section in (page, viewer):
        assert re.search(rf'\bcauseCaveat: "{re.escape(CAUSE_CAVEAT)}"', section)
