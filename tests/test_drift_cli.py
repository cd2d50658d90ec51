"""The `drift` command, and the drift verdict in `predict`'s summary and JSON worklist.

A tiny seed-cnn at 64 px gets a reference built here from synthetic films (the same generator as the batches), so
an unshifted batch is in distribution by construction and a contrast-halved one is not.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from imagefactory import make_png, varied_film
from modelfactory import checkpoint_meta, randomize_batchnorm
from pneumoscan.checkpoint import save_checkpoint
from pneumoscan.cli import main
from pneumoscan.gate.drift import MIN_IMAGES
from pneumoscan.models import create_model, default_preprocessing
from pneumoscan.inference.predictor import Predictor
from pneumoscan.preprocessing import resize_for_model
from pneumoscan.onboarding.reference_builder import build_reference

N_SITE = 60


@pytest.fixture(scope="module")
def ref_model(tmp_path_factory) -> Path:
    """A seed-cnn checkpoint at 64 px carrying a reference: 120 bank films, 120 validation films."""
    spec = default_preprocessing("seed-cnn", 64)
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model("seed-cnn"), 0).eval()
    squares = np.stack([resize_for_model(varied_film(1000 + i), spec) for i in range(240)])
    ref = build_reference(model, squares, np.arange(120), np.arange(120, 240), spec, bank_size=120)
    meta = {**checkpoint_meta("seed-cnn", 64, threshold=0.5, temperature=1.0), "reference": ref.to_meta()}
    return save_checkpoint(tmp_path_factory.mktemp("ref") / "ref.safetensors", model.state_dict(), meta,
                           extra=ref.to_tensors())


@pytest.fixture(scope="module")
def labelled_ref_model(tmp_path_factory) -> Path:
    """The same model with the labels of its reference films (the two "classes" drawn at random, 75% of class 1)."""
    spec = default_preprocessing("seed-cnn", 64)
    torch.manual_seed(0)
    model = randomize_batchnorm(create_model("seed-cnn"), 0).eval()
    squares = np.stack([resize_for_model(varied_film(1000 + i), spec) for i in range(240)])
    labels = (np.random.default_rng(0).random(240) < 0.75).astype(int)
    ref = build_reference(model, squares, np.arange(120), np.arange(120, 240), spec, bank_size=120, labels=labels)
    meta = {**checkpoint_meta("seed-cnn", 64, threshold=0.5, temperature=1.0), "reference": ref.to_meta()}
    return save_checkpoint(tmp_path_factory.mktemp("lref") / "ref.safetensors", model.state_dict(), meta,
                           extra=ref.to_tensors())


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """60 in-distribution films, one blank image (out of scope) and one broken file."""
    root = tmp_path_factory.mktemp("site")
    for i in range(N_SITE):
        make_png(root / f"film{i:03d}.png", varied_film(i))
    make_png(root / "zz-blank.png", np.full((120, 100), 200, np.uint8))
    (root / "zz-broken.png").write_text("not a picture")
    return root


@pytest.fixture(scope="module")
def shifted_site(tmp_path_factory) -> Path:
    """The same kind of films with their contrast halved (another site's windowing)."""
    root = tmp_path_factory.mktemp("shifted")
    for i in range(N_SITE):
        g = varied_film(i).astype(np.float64)
        make_png(root / f"film{i:03d}.png", np.clip((g - 128) * 0.5 + 128, 0, 255).astype(np.uint8))
    return root


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("pneumoscan: error:") and "Traceback" not in err, err
    return err


def test_the_test_model_carries_a_reference(ref_model):
    assert Predictor.from_checkpoint(ref_model).reference is not None


def test_help_says_what_the_statistic_is(capsys):
    assert main(["drift", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for phrase in ("maximum mean discrepancy", "pooled image features", "intensity", "95th percentile",
                   "resampling batches of the same size", "validation films", "at most 5% of the time",
                   "at least 50", "--json", "--adult-age", "--recursive", "--model", "mix of cases",
                   "pneumoscan adapt"):
        assert phrase in text, phrase


def test_in_distribution_batch_is_not_shifted_and_the_json_says_so(ref_model, site, tmp_path, capsys):
    out = tmp_path / "reports" / "drift.json"
    assert main(["drift", str(site), "--model", str(ref_model), "--json", str(out), "--no-progress"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert f"Drift check on {N_SITE} in-scope image(s): not shifted" in printed
    assert "features" in printed and "intensity" in printed  # the two components
    assert f"{N_SITE} in-scope image(s) of {N_SITE + 2} file(s); 1 not assessed (out of scope); 1 unreadable" in printed
    doc = json.loads(out.read_text())
    assert doc["shifted"] is False and doc["n_images"] == N_SITE
    assert isinstance(doc["statistic"], float) and isinstance(doc["threshold"], float)
    assert doc["statistic"] <= doc["threshold"]
    assert doc["statistic"] == pytest.approx(max(doc["features_component"], doc["intensity_component"]))
    assert doc["alpha"] == 0.05 and doc["n_used"] <= doc["n_images"] and "MMD" in doc["method"]
    assert (doc["n_files"], doc["n_in_scope"], doc["n_out_of_scope"], doc["n_unreadable"]) == (N_SITE + 2, N_SITE, 1, 1)
    assert doc["out_of_scope_reasons"] == {"blank or uniform image": 1}
    assert doc["model"] == "seed-cnn" and doc["model_file"] == str(ref_model) and doc["adult_age_years"] == 18.0
    assert doc["message"].startswith("Drift check on")
    # This test model's reference carries no labels: the check says it could not allow for the mix of cases.
    assert doc["estimated_mix"] is None and "NOT adjusted for the mix of cases" in doc["method"]
    assert "not adjusted for the mix of cases" in printed


def test_a_contrast_shift_is_flagged(ref_model, shifted_site, tmp_path, capsys):
    out = tmp_path / "drift.json"
    assert main(["drift", str(shifted_site), "--model", str(ref_model), "--json", str(out), "--no-progress"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "SHIFTED" in printed and "differ from the training data" in printed and "calibrate" in printed
    # The first step needs no labels: adapt, then calibrate.
    assert 0 <= printed.index("pneumoscan adapt") < printed.index("pneumoscan calibrate")
    doc = json.loads(out.read_text())
    assert doc["shifted"] is True and doc["statistic"] > doc["threshold"] and doc["n_images"] == N_SITE
    assert doc["intensity_component"] > doc["threshold"]


def test_a_labelled_reference_reports_the_mix_it_allowed_for(labelled_ref_model, site, shifted_site, tmp_path,
                                                             capsys):
    out = tmp_path / "drift.json"
    assert main(["drift", str(site), "--model", str(labelled_ref_model), "--json", str(out), "--no-progress"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    doc = json.loads(out.read_text())
    assert doc["shifted"] is False and 0.0 <= doc["estimated_mix"] <= 1.0 and "reweighted" in doc["method"]
    assert f"reweighted to {doc['estimated_mix']:.0%} pneumonia" in printed and doc["case_mix_note"] == ""
    assert main(["drift", str(shifted_site), "--model", str(labelled_ref_model), "--json", str(out),
                 "--no-progress"]) == 0
    assert json.loads(out.read_text())["shifted"] is True


def test_fewer_than_50_in_scope_images_are_refused(ref_model, site, tmp_path, capsys):
    files = sorted(site.glob("film*.png"))[:MIN_IMAGES - 1] + [site / "zz-blank.png", site / "zz-broken.png"]
    out = tmp_path / "drift.json"
    assert main(["drift", *map(str, files), "--model", str(ref_model), "--json", str(out), "--no-progress"]) == 1
    err = _one_error_line(capsys)
    assert f"only {MIN_IMAGES - 1} in-scope image(s)" in err and "at least 50" in err
    assert "1 out of scope, 1 unreadable" in err
    assert not out.exists()


def test_a_model_without_a_reference_is_refused_before_scoring(tiny_checkpoint, site, tmp_path, capsys,
                                                               monkeypatch):
    def no_scoring(*args, **kwargs):
        raise AssertionError("images were scored for a model that cannot check drift")

    monkeypatch.setattr(Predictor, "score_files", no_scoring)
    assert main(["drift", str(site), "--model", str(tiny_checkpoint), "--json", str(tmp_path / "d.json")]) == 1
    err = _one_error_line(capsys)
    assert "carries no reference" in err and "scripts/build_reference.py" in err and str(tiny_checkpoint) in err
    assert not (tmp_path / "d.json").exists()


@pytest.mark.parametrize("extra, message", [(["--json", "d.csv"], "must end in .json"),
                                            (["--adult-age", "-1"], "--adult-age")])
def test_bad_options_are_usage_errors(ref_model, site, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.chdir(tmp_path)
    assert main(["drift", str(site), "--model", str(ref_model), *extra]) == 2
    assert message in _one_error_line(capsys)


def test_predict_reports_the_drift_verdict_with_50_in_scope_images(ref_model, site, tmp_path, capsys):
    out = tmp_path / "w.json"
    assert main(["predict", str(site), "--model", str(ref_model), "--out", str(out), "--no-progress"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert f"Drift check on {N_SITE} in-scope image(s): not shifted" in printed
    doc = json.loads(out.read_text())
    assert doc["drift"]["shifted"] is False and doc["drift"]["n_images"] == N_SITE and doc["drift_reason"] == ""
    assert set(doc["drift"]) >= {"shifted", "statistic", "threshold", "n_images", "features_component",
                                 "intensity_component", "alpha", "method"}
    assert [r["decision"] for r in doc["results"]][-2:] == ["OUT_OF_SCOPE", ""]


def test_predict_prints_a_shifted_verdict(ref_model, shifted_site, tmp_path, capsys):
    assert main(["predict", str(shifted_site), "--model", str(ref_model), "--out", str(tmp_path / "w.csv"),
                 "--no-progress"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "SHIFTED" in printed and "(pneumoscan adapt), then calibrate it on labelled films of this site" in printed


def test_predict_under_50_says_nothing_and_records_why(ref_model, site, tmp_path, capsys):
    files = sorted(site.glob("film*.png"))[:10]
    out = tmp_path / "w.json"
    assert main(["predict", *map(str, files), "--model", str(ref_model), "--out", str(out), "--no-progress"]) == 0
    assert "Drift" not in capsys.readouterr().out
    doc = json.loads(out.read_text())
    assert doc["drift"] is None and doc["drift_reason"] == "only 10 in-scope image(s); a drift check needs at least 50"
