"""The second question (``pneumoscan.onboarding.cause``): the cause output's targets, operating point and frozen
head; a training run with the cause output; every output of a flagged film carries its cause, and no other film
does; ONNX Runtime and torch agree on it; a model without it keeps working."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from imagefactory import synthetic_xray
from PIL import Image

from pneumoscan.config import Config, apply_overrides
from pneumoscan.data import Record
from pneumoscan.onboarding.cause import (
    MIN_CAUSE_FILMS,
    add_cause_head,
    cause_targets,
    choose_cause_operating_point,
    fit_cause_head,
)

SIZE = 64


def make_cause_dataset(root: Path, n_normal: int = 24, n_bacterial: int = 44, n_viral: int = 44, size: int = 96,
                       seed: int = 0) -> Path:
    """Synthetic films named as the data set names them: NORMAL plain; bacterial pneumonia one dense focal blob (a
    lobar consolidation); viral a faint haze over both lungs. One film per patient."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for cls in ("NORMAL", "PNEUMONIA"):
        (root / cls).mkdir(parents=True, exist_ok=True)
    pid = 0
    for kind, n in (("normal", n_normal), ("bacteria", n_bacterial), ("virus", n_viral)):
        for _ in range(n):
            pid += 1
            img = synthetic_xray(size, size, seed=pid).astype(np.float64) * 0.8  # passes the scope gate's pixel check
            if kind == "bacteria":
                cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
                img += 130 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 12) ** 2))
            elif kind == "virus":
                for cx in (size * 0.3, size * 0.7):
                    img += 55 * np.exp(-((yy - size / 2) ** 2 / (2 * (size / 4) ** 2) + (xx - cx) ** 2 / (2 * (size / 7) ** 2)))
            name = f"IM-{pid:04d}-0001.jpeg" if kind == "normal" else f"person{pid}_{kind}_{pid}.jpeg"
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
                root / ("NORMAL" if kind == "normal" else "PNEUMONIA") / name, quality=95)
    return root


def cause_config(data: Path, cache: Path, **over: object) -> Config:
    base = [f"data.root='{data}'", f"data.cache_dir='{cache}'", "data.val_fraction=0.5", "data.num_workers=1",
            f"model.image_size={SIZE}", "model.name='deep-cnn'", "model.pretrained=false", "model.cause_head=true",
            "train.epochs=4", "train.batch_size=8", "train.threads=1", "train.lr=0.003", "train.seed=1",
            "eval.bootstrap_samples=50"]
    return apply_overrides(Config(), base + [f"{k}={v}" for k, v in over.items()])


@pytest.fixture(scope="module")
def cause_data(tmp_path_factory) -> Path:
    return make_cause_dataset(tmp_path_factory.mktemp("causes"))


@pytest.fixture(scope="module")
def cause_run(cause_data, tmp_path_factory) -> Path:
    from pneumoscan.training import train

    run = tmp_path_factory.mktemp("run") / "r"
    train(cause_config(cause_data, tmp_path_factory.mktemp("cache")), run, progress=False)
    return run


# ----------------------------------------------------------------------------- the pieces


def test_cause_targets_come_from_the_data_sets_names():
    recs = [Record("a", 1, "p1", "bacteria"), Record("b", 1, "p2", "virus"), Record("c", 1, "p3", None),
            Record("d", 0, "p4", None), Record("e", 0, "p5", "virus")]  # a NORMAL film never has a cause
    assert cause_targets(recs).tolist() == [0, 1, -1, -1, -1]


def test_the_cause_operating_point_is_chosen_on_known_causes_with_a_measured_temperature():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(60), np.ones(40)].astype(int)
    z = rng.normal(0, 1, 100) + 2.5 * (y - 0.5)
    targets = np.r_[y, -np.ones(30, int)]  # films of unknown cause are left out
    cause = choose_cause_operating_point(np.r_[z, rng.normal(0, 1, 30)], targets, [f"p{i}" for i in range(130)],
                                         method="test", n_resamples=100)
    assert (cause["n_val"], cause["n_viral"], cause["n_bacterial"]) == (100, 40, 60)
    assert 0 < cause["threshold"] < 1 and cause["val"]["auc"]["ci"][0] < cause["val"]["auc"]["value"]
    assert cause["val"]["balanced_accuracy"] > 0.75
    assert cause["temperature"] == 1.0 or cause["val"]["nll_raw"] - cause["val"]["nll"] >= 0.005
    with pytest.raises(ValueError, match=f"at least {MIN_CAUSE_FILMS}"):
        choose_cause_operating_point(z[:45], y[:45], method="test")  # 45 bacterial, 0 viral


def test_a_frozen_head_is_a_logistic_regression_on_the_pooled_features():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 8)) * np.array([5, 1, 1, 1, 1, 1, 1, 20]) + 3
    y = (x[:, 0] - 3 + rng.normal(0, 1, 400) > 0).astype(int)
    w, b = fit_cause_head(x, np.r_[y[:300], -np.ones(100, int)])
    z = x[300:] @ w + b
    from pneumoscan.metrics import roc_auc

    assert w.shape == (8,) and abs(w[0]) > 5 * abs(w[7]) and roc_auc(y[300:], z) > 0.9


# ----------------------------------------------------------------------------- a run with the cause output


def test_a_run_learns_the_cause_and_stores_its_operating_point(cause_run):
    from pneumoscan.checkpoint import load_checkpoint

    info = load_checkpoint(cause_run / "best.safetensors").info
    assert info.outputs == ("pneumonia", "viral") and info.has_cause
    c = info.cause
    assert 0 <= c["threshold"] <= 1 and c["temperature"] > 0 and "jointly" in c["method"]
    assert c["n_viral"] >= MIN_CAUSE_FILMS and c["n_bacterial"] >= MIN_CAUSE_FILMS
    assert c["val"]["auc"]["value"] > 0.8, c["val"]  # the two patterns are easy to tell apart
    with open(cause_run / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert "val_cause_auc" in rows[0] and float(rows[-1]["val_cause_auc"]) > 0.7
    assert float(info.val_metrics["val_auc"]) > 0.9  # the main output still learns


def test_without_a_known_cause_a_run_trains_the_main_output_and_says_why(tmp_path, caplog):
    from test_train import make_blob_dataset  # every pneumonia film is bacterial there

    from pneumoscan.checkpoint import load_checkpoint
    from pneumoscan.training import train

    data = make_blob_dataset(tmp_path / "blobs", n_per_class=12)
    with caplog.at_level(logging.WARNING, logger="pneumoscan.training"):
        train(cause_config(data, tmp_path / "cache", **{"train.epochs": 1}), tmp_path / "run", progress=False)
    assert "training without the cause output" in caplog.text and "viral" in caplog.text
    info = load_checkpoint(tmp_path / "run" / "best.safetensors").info
    assert info.outputs == ("pneumonia",) and info.cause is None
    assert json.loads((tmp_path / "run" / "config.json").read_text())["model"]["cause_head"] is False


def test_only_a_flagged_film_gets_a_cause_in_every_output(cause_run, cause_data, tmp_path, monkeypatch):
    from pneumoscan.cli import main
    from pneumoscan.inference.predictor import Predictor

    ckpt = cause_run / "best.safetensors"
    films = sorted(cause_data.rglob("*.jpeg"))
    onnx_p, torch_p = Predictor.from_checkpoint(ckpt), Predictor.from_checkpoint(ckpt, backend="torch")
    a, b = onnx_p.score_files(films), torch_p.score_files(films)
    assert [r.cause for r in a] == [r.cause for r in b]
    np.testing.assert_allclose([r.cause_probability for r in a], [r.cause_probability for r in b], atol=1e-5)
    assert all(bool(r.cause) == r.positive for r in a)  # every flagged film has a cause, no other film has one
    assert {r.cause for r in a if r.positive} == {"BACTERIAL", "VIRAL"}
    truth = {f.name: ("VIRAL" if "_virus_" in f.name else "BACTERIAL") for f in films if "person" in f.name}
    said = {Path(r.source).name: r.cause for r in a if r.cause and Path(r.source).name in truth}
    assert np.mean([said[n] == truth[n] for n in said]) > 0.75

    out = tmp_path / "w.csv"
    assert main(["predict", str(cause_data), "-r", "--model", str(ckpt), "--out", str(out), "--no-progress"]) == 0
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    for col in ("cause", "cause_score", "cause_probability", "cause_threshold"):
        assert col in rows[0]
    for r in rows:
        flagged = r["decision"] == "PNEUMONIA"
        assert bool(r["cause"]) == flagged and bool(r["cause_score"]) == flagged and r["cause_threshold"]
        if flagged:
            assert r["cause_text"] == {"BACTERIAL": "pattern more like bacterial",
                                       "VIRAL": "pattern more like viral"}[r["cause"]]
            assert float(r["cause_score"]) == pytest.approx(100 * float(r["cause_probability"]), abs=0.051)


def test_evaluate_writes_the_cause_section(cause_run, cause_data, tmp_path):
    from pneumoscan.evaluation import evaluate

    m = evaluate([cause_run / "best.safetensors"], cause_data, tmp_path / "ev", cache_dir=tmp_path / "cache",
                 bootstrap_samples=50)["models"][0]["cause"]
    assert m["n_known"] == 88 and m["n_unknown"] == 0 and m["n_viral"] == 44
    assert m["roc_auc"]["value"] > 0.8 and len(m["roc_auc"]["ci"]) == 2
    assert sum(map(sum, m["confusion"])) == 24 + 88 and m["confusion_labels"]["truth"] == ["NORMAL", "BACTERIAL",
                                                                                           "VIRAL"]
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["models"][0]["cause"]["threshold"] == m["threshold"]
    html = (tmp_path / "ev" / "report.html").read_text()
    assert "The second question: bacterial or viral?" in html and "Kermany" in html and "cause.png" in str(
        list((tmp_path / "ev").iterdir()))
    with open(tmp_path / "ev" / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["true_cause"] for r in rows} == {"", "bacteria", "virus"}
    assert all(bool(r["cause"]) == (r["decision"] == "PNEUMONIA") for r in rows)


def test_a_frozen_cause_head_adds_the_output_and_leaves_the_main_one_alone(cause_data, tmp_path):
    from pneumoscan.checkpoint import load_checkpoint
    from pneumoscan.inference.predictor import Predictor
    from pneumoscan.training import train

    run = tmp_path / "plain"
    train(cause_config(cause_data, tmp_path / "cache", **{"model.cause_head": "false", "train.epochs": 2}), run,
          progress=False)
    src = run / "best.safetensors"
    cause = add_cause_head(src, cause_data, tmp_path / "with-cause.safetensors", cache_dir=tmp_path / "cache")
    assert "frozen features" in cause["method"] and cause["n_train"] > 0 and cause["val"]["auc"]["value"] > 0.8
    info = load_checkpoint(tmp_path / "with-cause.safetensors").info
    assert info.outputs == ("pneumonia", "viral") and info.cause["threshold"] == cause["threshold"]
    films = sorted(cause_data.rglob("*.jpeg"))[:20]
    before = Predictor.from_checkpoint(src).predict_proba(films)
    after = Predictor.from_checkpoint(tmp_path / "with-cause.safetensors").predict_proba(films)
    np.testing.assert_allclose(after, before, atol=1e-6)  # the pneumonia output is unchanged
    with pytest.raises(ValueError, match="already"):
        add_cause_head(tmp_path / "with-cause.safetensors", cause_data, tmp_path / "again.safetensors",
                       cache_dir=tmp_path / "cache")
    seed = tmp_path / "seed"
    train(cause_config(cause_data, tmp_path / "cache", **{"model.cause_head": "false", "train.epochs": 1,
                                                          "model.name": "'seed-cnn'"}), seed, progress=False)
    with pytest.raises(ValueError, match="not one linear layer"):  # seed-cnn's head has a hidden layer
        add_cause_head(seed / "best.safetensors", cause_data, tmp_path / "x.safetensors", cache_dir=tmp_path / "cache")


def test_a_model_without_the_cause_output_keeps_working(tiny_checkpoint, cause_data):
    from pneumoscan.inference.predictor import Predictor

    results = Predictor.from_checkpoint(tiny_checkpoint).score_files(sorted(cause_data.rglob("*.jpeg"))[:6])
    assert all(r.cause == "" and r.cause_probability is None for r in results)
    d = results[0].to_dict()
    assert (d["cause"], d["cause_score"], d["cause_threshold"]) == ("", None, None)
