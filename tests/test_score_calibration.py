"""Issue #24, the score: the temperature may not sharpen what validation cannot support, the calibration error is
measured at other case mixes, and every output that shows a score says where it was calibrated."""

from __future__ import annotations

import io
import math

import numpy as np
import pydicom
import pytest
from highdicom.sr.utils import find_content_items
from pydicom.uid import generate_uid

from imagefactory import dicom_bytes, synthetic_xray
from pneumoscan import metrics as M
from pneumoscan.config import EvalConfig
from pneumoscan.data import Record
from pneumoscan.onboarding.operating_point import choose_operating_point, choose_temperature
from pneumoscan.inference.provenance import calibration_details, calibration_words, provenance
from pneumoscan.result import ModelIdentity, Result

TRAINING = "calibrated on the training hospital's validation films"


def _records(y: np.ndarray) -> list[Record]:
    return [Record(path=f"f{i}.png", label=int(v), patient_id=f"p{i}", cause=None) for i, v in enumerate(y)]


def test_a_nearly_separable_validation_set_cannot_sharpen_the_scores():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(300, int), np.zeros(100, int)]
    z = np.where(y == 1, rng.normal(4, 1.5, y.size), rng.normal(-4, 1.5, y.size))  # AUC about 0.99
    z[:3] = -1.0  # three misses: not separated at 0, so the likelihood has a minimum
    fitted = M.fit_temperature(z, y)
    assert fitted < 1.0, "the set-up must reward confidence, as the shipped model's validation did"
    meta, probs = choose_operating_point(_records(y), z, EvalConfig(bootstrap_samples=50))
    cal = meta["calibration"]
    assert cal["temperature"] == 1.0 and cal["fitted_by_likelihood"] == pytest.approx(fitted)
    assert cal["min_temperature"] == 1.0 and "not below 1" in cal["method"]
    assert (cal["n_images"], cal["n_pneumonia"]) == (400, 300)
    np.testing.assert_allclose(probs, M.apply_temperature(z, 1.0))
    # A fit above the floor is kept as it is.
    soft = z / 3.0 + rng.normal(0, 2.0, z.size)
    meta2, _ = choose_operating_point(_records(y), soft, EvalConfig(bootstrap_samples=50))
    cal2 = meta2["calibration"]
    assert cal2["temperature"] == pytest.approx(cal2["fitted_by_likelihood"]) and cal2["temperature"] > 1.0
    # The floor can be lowered in the config (0 restores the unfloored fit).
    meta3, _ = choose_operating_point(_records(y), z, EvalConfig(bootstrap_samples=50, min_temperature=0.0))
    assert meta3["calibration"]["temperature"] == pytest.approx(fitted)


def test_a_site_fit_below_the_floor_uses_the_floor_and_says_so():
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(60, int), np.zeros(60, int)]
    z = np.where(y == 1, rng.normal(5, 1, y.size), rng.normal(-5, 1, y.size))
    z[0] = -0.5
    out = choose_temperature(z, y, stored=1.7, stored_fitted_on="validation", min_temperature=1.0)
    assert out["source"] == "site" and out["temperature"] == 1.0 and "below the floor 1" in out["reason"]


def test_calibration_error_at_another_case_mix():
    rng = np.random.default_rng(2)
    y = rng.random(2000) < 0.77
    p = np.clip(np.where(y, rng.beta(8, 2, y.size), rng.beta(2, 8, y.size)), 0, 1)
    assert M.ece_at_prevalence(y, p, float(y.mean())) == pytest.approx(M.ece(y, p))
    # Scores calibrated at 77% pneumonia (the true posterior there) overstate the probability where it is rare.
    x = np.where(y, rng.normal(1, 1, y.size), rng.normal(-1, 1, y.size))
    posterior = 1 / (1 + np.exp(-(2 * x + np.log(0.77 / 0.23))))
    at_home, rare = M.ece_at_prevalence(y, posterior, float(y.mean())), M.ece_at_prevalence(y, posterior, 0.1)
    assert at_home < 0.04 and rare > 0.2
    assert math.isnan(M.ece_at_prevalence(np.ones(5), np.full(5, 0.9), 0.1))


def test_where_the_score_was_calibrated_in_words():
    shipped = {"calibration": {"temperature": 1.0, "fitted_by_likelihood": 0.56, "min_temperature": 1.0,
                               "method": "temperature scaling (NLL), not below 1", "fitted_on": "validation",
                               "n_images": 575, "n_pneumonia": 440}}
    assert calibration_words(shipped) == TRAINING
    details = calibration_details(shipped)
    assert "575 validation films" in details and "77% pneumonia" in details and "0.56" in details
    assert "fewer pneumonias" in details and "pneumoscan calibrate" in details
    site = {**shipped, "site_calibration": {"temperature_source": "site", "n_images": 120, "n_pneumonia": 30,
                                            "temperature": 1.4, "date": "2026-12-01T10:00:00"}}
    assert calibration_words(site) == "recalibrated at this site on 120 films"
    assert "120 films of this site, 25% pneumonia" in calibration_details(site)
    kept = {**shipped, "site_calibration": {"temperature_source": "stored", "n_images": 60}}
    assert calibration_words(kept) == f"{TRAINING}; threshold set at this site on 60 films"
    adapted = {**shipped, "adaptation": {"n_images": 300}}
    assert calibration_words(adapted) == f"{TRAINING}, before adaptation at this site"
    assert provenance(site)["score_calibration"] == "recalibrated at this site on 120 films"


def test_every_output_of_a_result_says_where_its_score_was_calibrated():
    model = ModelIdentity("efficientnet-lite0", "0123456789ab", 0.3, calibration=TRAINING)
    r = Result.scored("film.dcm", 0.8, model, in_scope=True)
    assert r.to_dict()["score_calibration"] == TRAINING
    assert f"(threshold 30.0; {TRAINING})" in r.caption()
    from pneumoscan.dicom_out import make_sr
    from pneumoscan.worklist import worklist_row

    assert worklist_row(r)["score_calibration"] == TRAINING
    source = pydicom.dcmread(io.BytesIO(dicom_bytes(synthetic_xray(64, 64))))
    source.StudyInstanceUID, source.SeriesInstanceUID = generate_uid(), generate_uid()
    sr = make_sr(source, r)
    texts = [item.TextValue for item in find_content_items(sr, value_type="TEXT", recursive=True)]
    assert TRAINING in texts
