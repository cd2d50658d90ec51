"""The server's result entries carry the image's DICOM context (never the patient's name); the page shows it."""

from __future__ import annotations

import io
import warnings

import pydicom
import pytest
from imagefactory import dicom_bytes, jpeg_bytes, synthetic_xray

from pneumoscan.serve import ServeSettings, create_app
from pneumoscan.worklist import CONTEXT_COLUMNS

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def client(predictor):
    return TestClient(create_app(predictor, ServeSettings(max_request_bytes=2_000_000, max_pixels=4_000_000)))


def _dicom() -> bytes:
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(synthetic_xray(220, 180, seed=3).astype("uint16") * 16)))
    for keyword, value in {"PatientName": "Doe^Jane", "PatientID": "MRN-42", "PatientAge": "003Y",
                           "PatientSex": "M", "AccessionNumber": "ACC-9", "StudyDate": "20240301",
                           "ViewPosition": "AP", "StudyInstanceUID": "1.2.3.4", "SeriesInstanceUID": "1.2.3.4.5"
                           }.items():
        setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_entries_carry_the_dicom_context_and_never_the_name(client):
    data = _dicom()
    files = [("Doe_film.dcm", data), ("a.jpeg", jpeg_bytes(synthetic_xray(300, 240, seed=1)))]
    r = client.post("/api/v1/predict", files=[("files", (n, d, "application/octet-stream")) for n, d in files])
    assert r.status_code == 200, r.text
    film, photo = r.json()["results"]
    sop = pydicom.dcmread(io.BytesIO(data)).SOPInstanceUID
    assert film["context"] == {"patient_id": "MRN-42", "accession": "ACC-9", "study_date": "20240301",
                               "age": "003Y", "sex": "M", "view": "AP", "study_uid": "1.2.3.4", "sop_uid": sop,
                               "series_uid": "1.2.3.4.5"}
    assert set(CONTEXT_COLUMNS) <= set(photo["context"]) and not any(photo["context"].values())
    assert "Jane" not in r.text and "Doe^" not in r.text


def test_the_page_shows_patient_id_accession_age_and_view_on_cards(client):
    js = client.get("/static/cards.js").text  # the cards' script (app.js was split)
    assert "function cardContext(r)" in js and js.count("...cardContext(r)") == 2  # scored and not-assessed cards
    for shown in ("c.patient_id", "c.accession", "c.age", "c.view"):
        assert shown in js
    assert all("patient_name" not in client.get(f"/static/{f}").text
               for f in ("app.js", "cards.js", "worklist.js", "report.js", "viewer.js"))
