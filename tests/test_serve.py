"""The web app and REST API: every route, every kind of bad input, limits, concurrency."""

from __future__ import annotations

import base64
import io
import re
import threading
import time
import warnings
from datetime import UTC

import numpy as np
import pytest
from imagefactory import (
    dicom_bytes,
    jpeg_bytes,
    png_bytes,
    png_header_bytes,
    synthetic_xray,
    xray_jpeg,
)
from PIL import Image

from pneumoscan.checkpoint import save_checkpoint
from pneumoscan.inference.predictor import Predictor
from pneumoscan.serve import ServeSettings, create_app

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture
def client(predictor):
    return TestClient(create_app(predictor, ServeSettings(max_request_bytes=2_000_000, max_pixels=4_000_000)))


def _post(client, files, **params):
    query = "&".join(f"{k}={str(v).lower()}" for k, v in params.items())
    return client.post("/api/v1/predict" + (f"?{query}" if query else ""),
                       files=[("files", (name, data, "application/octet-stream")) for name, data in files])


def _data_uri_png(uri: str) -> Image.Image:
    assert uri.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))


def test_health_model_page_and_docs(client, predictor):
    assert client.get("/healthz").json() == {"status": "ok", "model": "seed-cnn", "model_version": predictor.version,
                                             "auth": False}
    info = client.get("/api/v1/model").json()
    assert info["name"] == "seed-cnn" and info["threshold"] == pytest.approx(0.5)
    assert "not a diagnosis" in info["disclaimer"]
    assert info["preprocessing"]["image_size"] == 64
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "Decision support, not a diagnosis" in page.text
    # Offline: nothing is loaded from another host.
    assert "http://" not in page.text.replace("http://HOST", "") and "https://" not in page.text
    for asset in ("static/app.js", "static/style.css"):
        assert client.get("/" + asset).status_code == 200
    # The favicon: a small SVG from this server, linked from the page (no request for /favicon.ico elsewhere).
    assert '<link rel="icon" href="static/favicon.svg" type="image/svg+xml">' in page.text
    icon = client.get("/static/favicon.svg")
    assert icon.status_code == 200 and "image/svg+xml" in icon.headers["content-type"] and len(icon.content) < 2000
    # /docs and /redoc: every script, style sheet and favicon from this server (air-gapped hospital networks).
    for path in ("/docs", "/redoc"):
        html = client.get(path)
        assert html.status_code == 200 and "text/html" in html.headers["content-type"]
        assert "cdn." not in html.text and "fonts.googleapis" not in html.text and "tiangolo" not in html.text
        refs = re.findall(r'(?:src|href)="([^"]+)"', html.text) + re.findall(r"url: '([^']+)'", html.text)
        assert refs and all(ref.startswith("/") for ref in refs), refs
        for ref in refs:
            assert client.get(ref).status_code == 200, ref
    assert b"cdn.redoc.ly" not in client.get("/static/docs/redoc.standalone.js").content  # ReDoc's remote logo
    spec = client.get("/openapi.json").json()
    assert {"/api/v1/predict", "/api/v1/model", "/api/v1/drift", "/healthz"} <= set(spec["paths"])


def test_the_site_state_is_shown_next_to_the_model(client, tiny_checkpoint, tmp_path):
    from pneumoscan.checkpoint import load_checkpoint

    info = client.get("/api/v1/model").json()
    assert info["site_state"] == "shipped" and info["adaptation"] is None and info["provenance"] == ""
    assert _post(client, [("a.jpeg", xray_jpeg(1))]).json()["model"]["site_state"] == "shipped"
    src = load_checkpoint(tiny_checkpoint)
    adaptation = {"method": "AdaBN", "n_images": 312, "date": "2026-11-26T09:00:00Z", "prevalence_em": 0.41,
                  "parent_model_sha256": "e4d5bf9a2f72" + "0" * 52}
    path = save_checkpoint(tmp_path / "site.safetensors", src.state_dict,
                           {**src.meta, "adaptation": adaptation, "site_state": "adapted"})
    with TestClient(create_app(Predictor.from_checkpoint(path))) as c:
        info = c.get("/api/v1/model").json()
        assert info["site_state"] == "adapted" and info["adaptation"] == adaptation
        assert info["provenance"] == "Model adapted at this site on 2026-11-26 from 312 films (parent e4d5bf9a2f72)"
        assert info["site_calibration"] is None
        assert _post(c, [("a.jpeg", xray_jpeg(1))]).json()["model"]["site_state"] == "adapted"
    page_js = client.get("/static/app.js").text
    assert "site_state" in page_js and "site-state" in page_js


def test_predict_many_formats_ranked(client):
    files = [
        ("a.jpeg", xray_jpeg(1)),
        ("b.png", png_bytes((synthetic_xray(200, 260, seed=2).astype(np.uint16) * 257), mode="I;16")),
        ("c.dcm", dicom_bytes(synthetic_xray(220, 180, seed=3).astype(np.uint16) * 16, photometric="MONOCHROME1")),
    ]
    r = _post(client, files, heatmap=True, preview=True)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"]["name"] == "seed-cnn"
    results = body["results"]
    assert [x["filename"] for x in results] == ["a.jpeg", "b.png", "c.dcm"]
    assert [x["format"] for x in results] == ["JPEG", "PNG", "DICOM"]
    assert sorted(x["rank"] for x in results) == [1, 2, 3]
    by_rank = sorted(results, key=lambda x: x["rank"])
    assert [x["probability"] for x in by_rank] == sorted((x["probability"] for x in results), reverse=True)
    for x in results:
        assert 0.0 <= x["probability"] <= 1.0
        assert x["positive"] == (x["probability"] >= 0.5) and x["threshold"] == pytest.approx(0.5)
        assert x["decision"] in ("PNEUMONIA", "NORMAL") and x["in_scope"] is True and x["scope_reason"] == ""
        preview = _data_uri_png(x["image_png"])
        heat = _data_uri_png(x["heatmap_png"])
        # The heatmap keeps the film's aspect ratio.
        assert abs(heat.width / heat.height - x["width"] / x["height"]) < 0.02
        assert abs(preview.width / preview.height - x["width"] / x["height"]) < 0.02


def test_without_heatmap_no_image_payload(client):
    r = _post(client, [("a.jpeg", xray_jpeg())])
    x = r.json()["results"][0]
    assert r.status_code == 200 and "heatmap_png" not in x and "image_png" not in x


@pytest.mark.parametrize(
    "name, data, status, fragment",
    [
        ("empty.png", b"", 422, "empty"),
        ("notes.png", b"this is a text file, not an X-ray\n" * 10, 415, "text"),
        ("trunc.jpeg", xray_jpeg()[:600], 422, "trunc.jpeg"),
        ("tiny.png", png_bytes(np.zeros((40, 30), np.uint8)), 422, "at least 64"),
        ("huge.png", png_header_bytes(5000, 5000), 413, "huge.png"),
        ("multi.dcm", dicom_bytes(np.zeros((2, 80, 80), np.uint16), frames=2), 415, "frame"),
        ("nopix.dcm", dicom_bytes(None, with_pixels=False), 415, "nopix.dcm"),
    ],
)
def test_bad_files_get_4xx_with_message(client, name, data, status, fragment):
    r = _post(client, [(name, data)])
    assert r.status_code == status, r.text
    body = r.json()
    assert fragment.lower() in body["detail"].lower()
    assert body["results"][0]["ok"] is False and name in body["results"][0]["error"]


def test_mixed_good_and_bad_keeps_good_results(client):
    r = _post(client, [("good.jpeg", xray_jpeg()), ("bad.png", b"garbage"), ("good2.jpeg", xray_jpeg(5))])
    assert r.status_code == 200
    res = r.json()["results"]
    assert [x["ok"] for x in res] == [True, False, True]
    assert "bad.png" in res[1]["error"]
    # Every entry, result or error, carries the one result shape (Result.to_dict()) under its file name.
    from pneumoscan.result import RESULT_KEYS

    for x in res:
        assert set(RESULT_KEYS) | {"filename", "worklist_id"} <= set(x), sorted(x)
        assert set(x["context"]) == {"patient_id", "accession", "study_date", "age", "sex", "view", "study_uid",
                                     "series_uid", "sop_uid"}
    good = res[0]
    assert {"format", "width", "height", "thumbnail", "rank"} <= set(good) and good["format"] == "JPEG"
    assert good["model_name"] == "seed-cnn" and good["score"] == pytest.approx(100 * good["probability"], abs=0.05)
    bad = res[1]
    assert bad["decision"] == "" and bad["probability"] is None and bad["score"] is None and bad["in_scope"] is None
    assert bad["model_name"] == "seed-cnn" and bad["threshold"] == pytest.approx(0.5)


def test_request_level_errors(client):
    assert client.post("/api/v1/predict", json={"a": 1}).status_code == 415
    assert client.post("/api/v1/predict", data={"note": "urlencoded"}).status_code == 415
    r = client.post("/api/v1/predict", files={"note": (None, "a form field, not a file")})
    assert r.status_code == 400 and "no files" in r.json()["detail"]
    r = client.post("/api/v1/predict", content=b"--xx\r\nbroken", headers={"content-type": "multipart/form-data; boundary=xx"})
    assert 400 <= r.status_code < 500
    r = _post(client, [("big.jpeg", b"\xff\xd8\xff" + b"0" * 2_100_000)])
    assert r.status_code == 413 and "limit" in r.json()["detail"]
    r = _post(client, [(f"f{i}.jpeg", b"x") for i in range(40)])
    assert r.status_code == 400 and "files" in r.json()["detail"].lower()
    assert client.get("/api/v1/predict").status_code == 405


def test_random_bytes_never_500(client):
    rng = np.random.default_rng(0)
    for n in (1, 10, 131, 132, 133, 2000):
        for head in (b"", b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"\x00" * 128 + b"DICM"):
            data = head + rng.integers(0, 256, n, dtype=np.uint8).tobytes()
            r = _post(client, [("x.bin", data)])
            assert 400 <= r.status_code < 500, (n, head, r.status_code)


def test_client_names_are_never_paths(predictor, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    saved = tmp_path / "uploads"
    app = create_app(predictor, ServeSettings(save_uploads=str(saved)))
    r = _post(TestClient(app), [("../../escape.jpeg", xray_jpeg()), ("..\\..\\evil.png", b"nope")])
    res = r.json()["results"]
    assert res[0]["filename"] == "escape.jpeg" and res[1]["filename"] == "evil.png"
    written = sorted(p.name for p in saved.iterdir())
    assert len(written) == 1 and written[0].endswith(".jpeg") and "escape" not in written[0]
    assert not any(p.name.startswith("escape") for p in tmp_path.rglob("*"))


def test_uploads_not_written_by_default(predictor, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.chdir(tmp_path)
    rollovers = []
    original = tempfile.SpooledTemporaryFile.rollover

    def spy(self):  # a spooled upload that rolls over is written to a temporary file on disk
        rollovers.append(self)
        return original(self)

    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover", spy)
    noisy = synthetic_xray(1400, 1200).astype(np.int16) + np.random.default_rng(0).integers(-40, 40, (1400, 1200))
    big = jpeg_bytes(np.clip(noisy, 0, 255).astype(np.uint8), quality=100)
    assert len(big) > 1_100_000  # larger than Starlette's default 1 MiB in-memory spool
    r = _post(TestClient(create_app(predictor)), [("big.jpeg", big)])
    assert r.status_code == 200
    assert rollovers == [] and list(tmp_path.iterdir()) == []


class _SlowPredictor:
    """Wraps a predictor so that one prediction takes a while."""

    def __init__(self, inner, delay):
        self._inner, self._delay = inner, delay

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def assess(self, film, **kwargs):
        time.sleep(self._delay)
        return self._inner.assess(film, **kwargs)


def test_healthz_answers_while_predicting(predictor):
    client = TestClient(create_app(_SlowPredictor(predictor, 3.0)))
    done = {}

    def slow():
        done["status"] = _post(client, [("a.jpeg", xray_jpeg())]).status_code

    t = threading.Thread(target=slow)
    t.start()
    time.sleep(0.5)
    t0 = time.perf_counter()
    assert client.get("/healthz").status_code == 200
    health_s = time.perf_counter() - t0
    t.join()
    assert done["status"] == 200
    assert health_s < 1.5, f"/healthz waited {health_s:.2f} s behind a prediction"


def test_model_info_reads_the_validation_summary_of_the_shipped_model():
    """The shipped model stores its validation AUC as {"value", "ci"}: the card must show numbers, not NaN."""
    from pneumoscan.inference.predictor import PACKAGED_MODEL
    from pneumoscan.serve import create_app

    p = Predictor.from_checkpoint(PACKAGED_MODEL)
    with TestClient(create_app(p)) as c:
        info = c.get("/api/v1/model").json()
    v = info["validation"]
    summary = p.meta["val_summary"]
    assert v["auc"] == pytest.approx(summary["roc_auc"]["value"]) and v["auc_ci"] == pytest.approx(summary["roc_auc"]["ci"])
    assert v["sensitivity"] == pytest.approx(p.meta["operating_point"]["val_sensitivity"])
    assert info["operating_point"]["method"] == "min_cost_at_target_sensitivity"


# --------------------------------------------------------------------------- the stored worklist (issue 16, section 4)


def _blank_png():
    return png_bytes(np.full((300, 240), 235, np.uint8))


def _upload_mix(client):
    """Two films, a blank page (not assessed) and a file that is no image; returns the predict entries by name."""
    files = [("Doe_Jane-chest.jpeg", xray_jpeg(1)), ("Roe_Rick-chest.jpeg", xray_jpeg(2, 320, 260)),
             ("blank.png", _blank_png()), ("Smith_Ann.png", b"not an image at all")]
    r = _post(client, files)
    assert r.status_code == 200, r.text
    return {e["filename"]: e for e in r.json()["results"]}, dict(files)


def test_every_upload_is_stored_highest_risk_first_and_survives_a_restart(predictor, tmp_path):
    import hashlib

    from pneumoscan.serve.security import log_id

    db = tmp_path / "worklist.db"
    client = TestClient(create_app(predictor, ServeSettings(db=str(db))))
    entries, data = _upload_mix(client)
    assert all(isinstance(e["worklist_id"], int) for e in entries.values())
    body = client.get("/api/v1/worklist").json()
    rows = body["results"]
    assert body["total"] == 4 and "not a diagnosis" in body["disclaimer"]
    films = sorted(("Doe_Jane-chest.jpeg", "Roe_Rick-chest.jpeg"), key=lambda n: -entries[n]["probability"])
    assert [r["id"] for r in rows] == [entries[n]["worklist_id"] for n in (*films, "blank.png", "Smith_Ann.png")]
    by_id = {r["id"]: r for r in rows}
    for name, entry in entries.items():
        row = by_id[entry["worklist_id"]]
        assert row["input_sha256"] == hashlib.sha256(data[name]).hexdigest()
        assert row["filename_hash"] == log_id(name) and row["client"] == "local" and row["source"] == "upload"
        assert row["model_name"] == "seed-cnn" and row["model_version"] == predictor.version
        assert row["review"] is None
    film = by_id[entries[films[0]]["worklist_id"]]
    assert film["probability"] == pytest.approx(entries[films[0]]["probability"])
    assert film["decision"] == entries[films[0]]["decision"] and film["in_scope"] is True
    assert film["positive"] == entries[films[0]]["positive"]
    blank = by_id[entries["blank.png"]["worklist_id"]]
    assert blank["in_scope"] is False and blank["decision"] == "OUT_OF_SCOPE" and blank["scope_reason"]
    bad = by_id[entries["Smith_Ann.png"]["worklist_id"]]
    assert bad["error"] and bad["probability"] is None and bad["in_scope"] is None
    assert bad["ok"] is False and bad["decision"] == "" and bad["positive"] is None  # unread: no decision
    # File names (here: patients' names) are never stored, not even inside an error message.
    text = client.get("/api/v1/worklist").text + client.get("/api/v1/audit").text
    assert not any(word in text for word in ("Doe_Jane", "Roe_Rick", "Smith_Ann"))
    # A second app on the same database file (a restart) lists the same worklist.
    again = TestClient(create_app(predictor, ServeSettings(db=str(db))))
    assert again.get("/api/v1/worklist").json()["results"] == rows
    # A re-sent image (the same bytes, the same model) is the same result, counted (issue 26, item 11).
    r = _post(again, [("again.jpeg", data["Doe_Jane-chest.jpeg"])])
    assert r.json()["results"][0]["worklist_id"] == entries["Doe_Jane-chest.jpeg"]["worklist_id"]
    assert r.json()["results"][0]["times_received"] == 2
    assert again.get("/api/v1/worklist").json()["total"] == 4


def test_worklist_filters_and_paging(client):
    entries, _ = _upload_mix(client)
    ids = lambda query: [r["id"] for r in client.get("/api/v1/worklist" + query).json()["results"]]
    every = ids("")
    films = every[:2]
    assert ids("?in_scope=false") == [entries["blank.png"]["worklist_id"]]
    assert ids("?in_scope=true") == films
    flagged = [e["worklist_id"] for e in entries.values() if e.get("positive")]
    assert sorted(ids("?flagged=true")) == sorted(flagged)
    assert ids("?limit=2&offset=1") == every[1:3]
    assert client.get("/api/v1/worklist?limit=1").json()["total"] == 4
    assert ids("?since=2000-01-01&until=2999-12-31") == every
    assert ids("?since=2999-01-01") == [] and ids("?until=2000-01-01T00:00:00Z") == []
    client.post(f"/api/v1/worklist/{films[0]}/review", json={"verdict": "agree"})
    assert ids("?unreviewed=true") == every[1:]
    r = client.get("/api/v1/worklist?since=yesterday")
    assert r.status_code == 422 and "ISO 8601" in r.json()["detail"]
    assert client.get("/api/v1/worklist?limit=0").status_code == 422
    assert client.get("/api/v1/worklist?in_scope=perhaps").status_code == 422


def test_review_is_recorded_audited_and_checked(client):
    entries, _ = _upload_mix(client)
    rid = entries["Doe_Jane-chest.jpeg"]["worklist_id"]
    r = client.post(f"/api/v1/worklist/{rid}/review", json={"verdict": "disagree", "note": "atelectasis"})
    assert r.status_code == 200, r.text
    assert r.json()["review"]["verdict"] == "disagree" and r.json()["review"]["note"] == "atelectasis"
    assert r.json()["review"]["reviewer"] == "local"
    r = client.post(f"/api/v1/worklist/{rid}/review", json={"verdict": "agree"})
    assert r.json()["review"]["verdict"] == "agree" and r.json()["n_reviews"] == 2
    one = client.get(f"/api/v1/worklist/{rid}").json()
    assert [v["verdict"] for v in one["reviews"]] == ["disagree", "agree"] and one["review"]["verdict"] == "agree"
    row = next(x for x in client.get("/api/v1/worklist").json()["results"] if x["id"] == rid)
    assert row["review"]["verdict"] == "agree"
    events = client.get("/api/v1/audit").json()["events"]
    assert [e["event"] for e in events[:2]] == ["review", "review"]
    assert events[0]["result_id"] == rid and events[0]["client"] == "local"
    assert events[0]["input_sha256"] == row["input_sha256"] and events[0]["model_version"] == row["model_version"]
    assert sum(e["event"] == "result" for e in events) == 4
    assert client.get("/api/v1/audit?event=review").json()["events"] == events[:2]
    # 404 for an unknown id, 422 for a bad verdict, a bad note or a body that is not JSON.
    r = client.post("/api/v1/worklist/999999/review", json={"verdict": "agree"})
    assert r.status_code == 404 and "999999" in r.json()["detail"]
    assert client.get("/api/v1/worklist/999999").status_code == 404
    for body in ({"verdict": "maybe"}, {"note": "no verdict"}, {"verdict": "agree", "note": 5},
                 {"verdict": "agree", "note": "x" * 2001}, ["agree"]):
        r = client.post(f"/api/v1/worklist/{rid}/review", json=body)
        assert r.status_code == 422, body
    r = client.post(f"/api/v1/worklist/{rid}/review", content=b"agree", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["detail"]
    r = client.post(f"/api/v1/worklist/{rid}/review", content=b"{" + b" " * 70_000 + b"}",
                    headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert client.post("/api/v1/worklist/abc/review", json={"verdict": "agree"}).status_code == 422
    assert client.get(f"/api/v1/worklist/{rid}").json()["n_reviews"] == 2


def test_retention_runs_at_start_up(predictor, tmp_path):
    from datetime import datetime, timedelta

    from resultfactory import scored

    from pneumoscan.store import WorklistStore

    db = tmp_path / "w.db"
    with WorklistStore(db) as store:
        for days in (400, 10):
            result = scored("x.jpeg", 0.5, threshold=0.4)
            assert result.decision == "PNEUMONIA"
            store.add(result, input_sha256="ab" * 32, source="upload", filename_hash="", client="local",
                      created=datetime.now(UTC) - timedelta(days=days))
    keep = TestClient(create_app(predictor, ServeSettings(db=str(db), retention_days=None)))
    assert keep.get("/api/v1/worklist").json()["total"] == 2
    client = TestClient(create_app(predictor, ServeSettings(db=str(db), retention_days=365)))
    assert client.get("/api/v1/worklist").json()["total"] == 1
    assert client.get("/api/v1/audit?event=purge").json()["events"][0]["client"] == "retention"
    with pytest.raises(ValueError, match="retention_days"):
        ServeSettings(retention_days=0)


def test_a_database_failure_never_costs_the_result(predictor, caplog):
    from pneumoscan.store import StoreError

    app = create_app(predictor)
    store = app.state.pneumoscan.store

    def broken(*_args, **_kwargs):
        raise StoreError("worklist database x: OperationalError: disk I/O error")

    store.add_or_count = broken
    client = TestClient(app)
    with caplog.at_level("ERROR", logger="pneumoscan.serve"):
        r = _post(client, [("Doe_Jane.jpeg", xray_jpeg())])
    assert r.status_code == 200
    entry = r.json()["results"][0]
    assert entry["ok"] and entry["worklist_id"] is None
    assert entry["worklist_error"] == "the worklist database failed; see the server log"  # never the driver's words
    assert "not recorded in the worklist database" in caplog.text and "Doe_Jane" not in caplog.text


@pytest.mark.parametrize(("message", "reason"), [
    ("worklist database /srv/readonly/w.db: OperationalError: attempt to write a readonly database", "the worklist database is read-only"),
    ("worklist database /srv/disk-full/w.db: OperationalError: database or disk is full", "the worklist database's disk is full"),
    ("worklist database w.db: OperationalError: database is locked", "the worklist database was busy"),
    ("worklist database /srv/locked/w.db: IntegrityError: duplicate key (patient)=(P1)", "the worklist database failed"),
])
def test_a_database_failure_says_why_in_a_few_words(predictor, message, reason):
    from pneumoscan.store import StoreError

    app = create_app(predictor)

    def broken(*_args, **_kwargs):
        raise StoreError(message)

    app.state.pneumoscan.store.add_or_count = broken
    entry = _post(TestClient(app), [("a.jpeg", xray_jpeg())]).json()["results"][0]
    assert entry["worklist_error"] == f"{reason}; see the server log"


def test_the_stored_context_comes_from_the_result_and_never_the_patient_name(tmp_path):
    from types import SimpleNamespace

    from resultfactory import scored, unread

    from pneumoscan.io import ImageContext
    from pneumoscan.serve.record import record
    from pneumoscan.store import WorklistStore

    db = tmp_path / "w.db"
    store = WorklistStore(db)
    state = SimpleNamespace(store=store, auth=SimpleNamespace(client_id="token-0123456789"))
    context = ImageContext(patient_id="P1", accession="A1", age="004Y", sex="F", view="AP", study_date="20240301",
                           study_uid="1.2.3", series_uid="1.2.3.4", sop_uid="1.2.3.4.5", patient_name="DOE^JANE")
    result = scored("x.dcm", 0.7, context=context)
    entry = {"filename": "x.dcm", **result.to_dict(), "thumbnail": _THUMB}
    record(state, "x.dcm", b"bytes", result, entry)
    bad = unread("Doe_Jane.dcm", "Doe_Jane.dcm: not an image", context=ImageContext(patient_id="P2",
                                                                                 patient_name="DOE^JANE"))
    bad_entry = {"filename": "Doe_Jane.dcm", **bad.to_dict()}
    record(state, "Doe_Jane.dcm", b"other bytes", bad, bad_entry)
    rows = {row["id"]: row for row in store.list()}
    first, second = rows[entry["worklist_id"]], rows[bad_entry["worklist_id"]]
    assert first["context"] == {"patient_id": "P1", "accession": "A1", "study_date": "20240301", "age": "004Y",
                                "sex": "F", "view": "AP", "study_uid": "1.2.3", "series_uid": "1.2.3.4",
                                "sop_uid": "1.2.3.4.5"}
    assert first["context"] == result.to_dict()["context"] == entry["context"]
    assert first["probability"] == pytest.approx(0.7) and first["decision"] == "PNEUMONIA" and first["positive"]
    assert first["client"] == "token-0123456789" and first["thumbnail"] == _THUMB
    assert second["context"]["patient_id"] == "P2" and second["decision"] == "" and second["thumbnail"] is None
    assert "Doe_Jane" not in second["error"] and "not an image" in second["error"]
    stored = str(store.list(thumbnails=False))  # (a thumbnail's base64 could spell anything)
    assert "DOE" not in stored and "JANE" not in stored and "patient_name" not in stored
    store.close()
    assert not any(b"DOE^JANE" in f.read_bytes() for f in tmp_path.iterdir())


def test_a_dicom_upload_is_stored_with_its_context_and_never_the_patient_name(predictor, tmp_path):
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(synthetic_xray(300, 240), bits=8)))
    ds.PatientID, ds.PatientName, ds.AccessionNumber, ds.ViewPosition = "P-4711", "DOE^JANE", "ACC-42", "PA"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    db = tmp_path / "w.db"
    client = TestClient(create_app(predictor, ServeSettings(db=str(db))))
    entry = _post(client, [("film.dcm", buf.getvalue())]).json()["results"][0]
    row = client.get("/api/v1/worklist").json()["results"][0]
    assert row["id"] == entry["worklist_id"]
    context = entry.get("context") or {}  # the decoded DICOM context, as the predict entry carries it
    assert context["patient_id"] == "P-4711" and context["accession"] == "ACC-42" and context["view"] == "PA"
    for key in ("patient_id", "accession", "view"):
        assert row["context"][key] == context.get(key, ""), key
    assert row["context"] == context
    assert "DOE" not in str(row)
    app_state = client.app.state.pneumoscan
    app_state.store.close()
    assert b"DOE^JANE" not in db.read_bytes() and not any(b"DOE^JANE" in p.read_bytes() for p in tmp_path.iterdir())


def test_the_model_card_is_served_as_html_without_raw_html(client):
    from pneumoscan.serve.state import render_markdown

    info = client.get("/api/v1/model").json()
    html = info["model_card_html"]
    assert info["model_card"].startswith("# Model card")  # the Markdown stays, for other clients
    assert html.startswith("<h2>Model card") and "<h3>Intended use</h3>" in html  # one level down on the page
    assert "<table>" in html and "<th>threshold on validation</th>" in html and "<strong>" in html
    assert "<script" not in html.lower()
    evil = render_markdown("# T\n\n<script>alert(1)</script>\n\n<img src=x onerror=alert(1)>\n\n"
                           "[click](javascript:alert(1)) ![remote](https://example.org/x.png)\n")
    assert "<script" not in evil and "<img" not in evil
    assert "&lt;script&gt;" in evil and 'href="javascript' not in evil


# ----------------------------------------------------------------------------- worklist: borderline band, order,
# thumbnails (issue 17)

_THUMB = "data:image/jpeg;base64," + base64.b64encode(jpeg_bytes(synthetic_xray(128, 108))).decode("ascii")


def test_every_result_stores_its_thumbnail_and_the_worklist_returns_it(client, monkeypatch):
    """The analysis's ``thumbnail`` (a small JPEG data URI) is stored with the result and comes back in the
    worklist's rows; a file that could not be read has none."""
    import dataclasses

    import pneumoscan.serve.batch as batch_mod

    real = batch_mod.analyse

    def with_thumbnail(*args, **kwargs):  # as serve/analysis.py makes it: a 128 px JPEG per scored upload
        done = real(*args, **kwargs)
        assert done.pictures["thumbnail"].startswith("data:image/jpeg;base64,")
        return dataclasses.replace(done, pictures={**done.pictures, "thumbnail": _THUMB})

    monkeypatch.setattr(batch_mod, "analyse", with_thumbnail)
    entries, _ = _upload_mix(client)
    rows = {r["id"]: r for r in client.get("/api/v1/worklist").json()["results"]}
    for name in ("Doe_Jane-chest.jpeg", "blank.png"):
        assert rows[entries[name]["worklist_id"]]["thumbnail"] == _THUMB
    assert rows[entries["Smith_Ann.png"]["worklist_id"]]["thumbnail"] is None
    lean = client.get("/api/v1/worklist?thumbnails=false").json()["results"]
    assert len(lean) == 4 and all("thumbnail" not in r for r in lean)


def test_worklist_borderline_band_and_order(client):
    from resultfactory import scored

    store = client.app.state.pneumoscan.store
    ids = {}
    for n, p in enumerate((0.05, 0.42, 0.5, 0.58, 0.61, 0.97)):
        result = scored(f"f{n}.jpeg", p, threshold=0.5)
        assert result.decision == ("PNEUMONIA" if p >= 0.5 else "NORMAL")
        ids[p] = store.add(result, input_sha256=f"{n:064x}", source="upload", filename_hash="", client="local")
    body = client.get("/api/v1/worklist?borderline=10").json()  # points on the 0-100 score: 40 to 60
    assert [r["id"] for r in body["results"]] == [ids[0.58], ids[0.5], ids[0.42]]
    assert body["total"] == 3 and body["borderline"] == 10 and body["order"] == "risk"
    assert [r["probability"] for r in client.get("/api/v1/worklist?borderline=8.5&flagged=true").json()["results"]] \
        == [0.58, 0.5]
    newest = client.get("/api/v1/worklist?order=newest").json()["results"]
    assert [r["id"] for r in newest] == sorted(ids.values(), reverse=True)
    for bad in ("borderline=0", "borderline=51", "borderline=wide", "order=alphabetical"):
        assert client.get("/api/v1/worklist?" + bad).status_code == 422, bad


def test_openapi_gives_every_api_route_a_typed_200_response_and_a_tag(client):
    """A hospital's integrator generates a client from /openapi.json: every /api/v1 route says what it returns."""
    spec = client.get("/openapi.json").json()
    routes = [(path, method, op) for path, ops in spec["paths"].items() if path.startswith("/api/v1")
              for method, op in ops.items()]
    assert len(routes) >= 9
    for path, method, op in routes:
        assert op.get("tags"), (method, path)
        content = op["responses"]["200"]["content"]
        schema = next(iter(content.values()))["schema"]
        assert "$ref" in schema or schema.get("type") == "string", (method, path, schema)
    from pneumoscan.result import RESULT_KEYS

    schemas = spec["components"]["schemas"]
    result_keys = set(RESULT_KEYS)
    for name in ("PredictEntry", "StoredResult"):  # uploaded and stored results: the one result's keys
        assert result_keys <= set(schemas[name]["properties"]), name
    assert {t["name"] for t in spec["tags"]} == {"model", "predictions", "worklist", "monitoring"}
