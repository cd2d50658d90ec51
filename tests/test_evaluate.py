"""Evaluation: the end-of-training operating point, the evaluate library call and CLI, the comparison of two
models, and the self-contained HTML report (checked by parsing it)."""

import base64
import csv
import json
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import make_blob_dataset, small_config

from pneumoscan import metrics as M
from pneumoscan.checkpoint import load_checkpoint, save_checkpoint
from pneumoscan.data import index_dataset
from pneumoscan.cli import main
from pneumoscan.evaluation.evaluate import evaluate
from pneumoscan.evaluation.report import GALLERY_SIZES
from pneumoscan.training import train

MODEL_SECTIONS = ("validation", "metrics", "curves", "confusion", "calibration", "scores", "subgroups", "gallery")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two tiny trained runs (seed-cnn, 2 epochs, 64 px) and an evaluation folder with a few wrong labels."""
    tmp = tmp_path_factory.mktemp("evaluate")
    train_data = make_blob_dataset(tmp / "train", n_per_class=16, seed=0)
    runs = []
    for name, seed in (("a", 3), ("b", 5)):
        cfg = small_config(train_data, tmp / "cache", **{"train.seed": seed, "eval.bootstrap_samples": 300})
        runs.append(train(cfg, tmp / f"run_{name}", progress=False).run_dir)
    eval_data = make_blob_dataset(tmp / "eval", n_per_class=14, seed=1)
    site_data = make_blob_dataset(tmp / "site", n_per_class=30, seed=2)  # enough films for calibrate (50, 15 a class)
    # Swap three images each way so that both kinds of error exist whatever the model learned.
    for src, dst in (("PNEUMONIA", "NORMAL"), ("NORMAL", "PNEUMONIA")):
        for p in sorted((eval_data / src).iterdir())[:3]:
            shutil.move(str(p), eval_data / dst / p.name)
    return {"tmp": tmp, "runs": runs, "eval": eval_data, "site": site_data, "cache": tmp / "cache"}


class ReportParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids, self.srcs, self.hrefs, self.tags, self.gallery = [], [], [], set(), {}
        self.captions, self._in_caption = [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.add(tag)
        if "id" in a:
            self.ids.append(a["id"])
        if "src" in a:
            self.srcs.append(a["src"])
        if "href" in a:
            self.hrefs.append(a["href"])
        if tag == "figure" and "gallery-item" in (a.get("class") or ""):
            self.gallery.setdefault(a["data-kind"], 0)
            self.gallery[a["data-kind"]] += 1
            self.captions.append((a["data-kind"], float(a["data-score"])))  # the score on 0-100


def parse(path: Path) -> ReportParser:
    p = ReportParser()
    p.feed(path.read_text(encoding="utf-8"))
    return p


def test_training_stores_operating_point_calibration_and_val_summary(world):
    run = world["runs"][0]
    meta = load_checkpoint(run / "best.safetensors").meta
    op, cal = meta["operating_point"], meta["calibration"]
    assert op["method"] == "min_cost_at_target_sensitivity" and op["target_sensitivity"] == 0.95 and op["miss_cost"] == 3.0
    for key in ("threshold", "val_sensitivity", "val_specificity", "youden_threshold"):
        assert key in op
    for key in ("temperature", "val_ece_before", "val_ece_after", "val_brier_before", "val_brier_after"):
        assert key in cal
    with open(run / "val_scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["path", "label", "patient_id", "cause", "score"]
    y = np.array([r["label"] == "PNEUMONIA" for r in rows], dtype=int)
    s = np.array([float(r["score"]) for r in rows])
    assert len(rows) == meta["n_val_images"]
    # The threshold is the highest one reaching the target on the (calibrated) validation scores.
    assert op["threshold"] == pytest.approx(M.threshold_for_sensitivity(y, s, 0.95), abs=1e-6)
    assert op["val_sensitivity"] >= 0.95
    # One implementation: the validation summary has exactly the shape evaluate produces.
    vs = meta["val_summary"]
    assert vs["thresholds"]["operating"]["threshold"] == op["threshold"]
    assert vs["roc_auc"]["value"] == pytest.approx(M.roc_auc(y, s), abs=1e-6)
    assert vs["bootstrap"]["n_resamples"] == 300


def test_evaluate_cli_single_model_report(world, tmp_path, capsys):
    run = world["runs"][0]
    out = tmp_path / "out"
    code = main(["evaluate", "--model", str(run / "best.safetensors"), "--data", str(world["eval"]), "--out", str(out),
                 "--cache-dir", str(world["cache"]), "--bootstrap", "400", "--seed", "7"])
    assert code == 0, capsys.readouterr().err
    assert "sensitivity" in capsys.readouterr().out
    result = json.loads((out / "metrics.json").read_text())
    assert set(result) >= {"pneumoscan_version", "data", "bootstrap", "models", "comparison", "warnings", "outputs"}
    assert result["bootstrap"]["n_resamples"] == 400 and result["bootstrap"]["seed"] == 7
    m = result["models"][0]
    meta = load_checkpoint(run / "best.safetensors").meta
    s = m["summary"]
    assert s["n_images"] == 28 and m["operating_point_source"] == "checkpoint"
    assert s["thresholds"]["operating"]["threshold"] == pytest.approx(meta["operating_point"]["threshold"])
    assert s["thresholds"]["youden"]["threshold"] == pytest.approx(meta["operating_point"]["youden_threshold"])
    assert s["thresholds"]["fixed_0.5"]["threshold"] == 0.5
    for name in ("operating", "fixed_0.5", "youden"):
        for metric in M.THRESHOLD_METRICS:
            v = s["thresholds"][name]["metrics"][metric]
            assert set(v) == {"value", "ci", "ci_method"}
    assert set(s["subgroups"]["cause"]) == {"bacteria"}  # make_blob_dataset names every pneumonia 'bacteria'
    assert m["calibration"]["temperature"] == pytest.approx(meta["calibration"]["temperature"])
    assert "validation_comparison" in m
    for name in ("roc.png", "pr.png", "confusion.png", "calibration.png", "score-histogram.png", "scores.csv", "report.html"):
        assert (out / name).is_file(), name

    report = parse(out / "report.html")
    expected = {"summary", "methods", "data", "m1"} | {f"m1-{s}" for s in MODEL_SECTIONS}
    assert expected <= set(report.ids)
    assert len(report.ids) == len(set(report.ids))  # ids are unique
    assert "comparison" not in report.ids
    # Self-contained: no script, no external stylesheet, every image inline (plots PNG, gallery JPEG), only in-page links.
    assert not report.tags & {"script", "link", "iframe", "object"}
    assert report.srcs and all(src.startswith(("data:image/png;base64,", "data:image/jpeg;base64,")) for src in report.srcs)
    magic = {"png": b"\x89PNG\r\n\x1a\n", "jpeg": b"\xff\xd8\xff"}
    for src in report.srcs:
        kind = src[len("data:image/"):src.index(";")]
        assert base64.b64decode(src.split(",", 1)[1]).startswith(magic[kind])
    assert all(h.startswith("#") for h in report.hrefs)
    text = (out / "report.html").read_text()
    assert "http://" not in text and "https://" not in text
    assert "Decision support, not a diagnosis" in text
    assert "doi:10.17632/rscbjbr9sj.2" in text and "CC BY 4.0" in text
    # Gallery: as many entries as there are cases, up to 16 errors and 8 correct of each kind.
    conf = s["thresholds"]["operating"]["confusion"]
    for kind in ("fn", "fp", "tp", "tn"):
        assert report.gallery.get(kind, 0) == min(GALLERY_SIZES[kind], conf[kind]), kind
    # Most confident first: missed pneumonia by ascending score, false alarms by descending score.
    for kind, descending in (("fn", False), ("fp", True), ("tp", True), ("tn", False)):
        scores = [v for k, v in report.captions if k == kind]
        assert scores == sorted(scores, reverse=descending), kind


def test_evaluate_two_models_comparison(world, tmp_path):
    ckpts = [r / "best.safetensors" for r in world["runs"]]
    out = tmp_path / "cmp"
    result = evaluate(ckpts, world["eval"], out, cache_dir=world["cache"], bootstrap_samples=300)
    assert len(result["models"]) == 2 and len(result["comparison"]) == 1
    cmp = result["comparison"][0]
    assert 0.0 <= cmp["delong"]["p_value"] <= 1.0
    a, b = (m["summary"]["roc_auc"]["value"] for m in result["models"])
    assert cmp["delong"]["diff"] == pytest.approx(a - b)
    lo, hi = cmp["bootstrap_auc_difference"]["ci"]
    assert lo <= a - b <= hi
    assert (out / "comparison-roc.png").is_file() and (out / "model2-roc.png").is_file()
    report = parse(out / "report.html")
    assert {"comparison", "m1", "m2", "m2-gallery"} <= set(report.ids)
    text = (out / "report.html").read_text()
    assert "DeLong" in text and "reference" in text


def test_checkpoint_without_operating_point_falls_back_to_half(world, tmp_path):
    ckpt = load_checkpoint(world["runs"][0] / "best.safetensors")
    meta = {k: v for k, v in ckpt.meta.items() if k not in ("operating_point", "calibration", "val_summary")}
    old = tmp_path / "old" / "best.safetensors"
    save_checkpoint(old, ckpt.state_dict, meta)
    out = tmp_path / "out"
    result = evaluate([old], world["eval"], out, cache_dir=world["cache"], bootstrap_samples=200)
    m = result["models"][0]
    assert m["operating_point_source"] == "fallback_0.5"
    assert m["summary"]["thresholds"]["operating"]["threshold"] == 0.5
    assert "youden" not in m["summary"]["thresholds"] and "validation_comparison" not in m
    assert any("0.5 is used" in w for w in m["warnings"])
    text = (out / "report.html").read_text()
    assert "0.5 is used" in text


def test_evaluating_the_validation_split_warns(world, tmp_path):
    run = world["runs"][0]
    # torch: the check below compares with training's own validation summary, made with torch; the stored threshold
    # sits exactly on one validation film's score, so ONNX Runtime's 1e-7 difference could flip that one film.
    result = evaluate([run / "best.safetensors"], run / "split.csv", tmp_path / "out", split="val",
                      cache_dir=world["cache"], bootstrap_samples=200, backend="torch")
    m = result["models"][0]
    ov = m["training_overlap"]
    # Both the content hashes training stores and the run's split.csv find them.
    assert ov["checked"] and ov["by_content"]["n_val"] == ov["by_split_csv"]["n_val"] == m["summary"]["n_images"]
    assert ov["n_val"] == m["summary"]["n_images"] and ov["n_train"] == 0
    assert [a["kind"] for a in m["training_alerts"]] == ["val"]
    assert any("VALIDATION images" in w for w in m["warnings"])
    html = (tmp_path / "out" / "report.html").read_text()
    assert 'id="m1-val-images"' in html and 'role="alert"' in html
    # Same images, same function, same calibration: evaluate reproduces the stored validation summary.
    meta = load_checkpoint(run / "best.safetensors").meta
    assert m["summary"]["roc_auc"]["value"] == pytest.approx(meta["val_summary"]["roc_auc"]["value"], abs=1e-6)
    sens = m["summary"]["thresholds"]["operating"]["metrics"]["sensitivity"]["value"]
    assert sens == pytest.approx(meta["operating_point"]["val_sensitivity"])


def test_calibrate_chooses_a_new_operating_point_and_keeps_the_weights(world, tmp_path):
    """`pneumoscan calibrate` reruns the end of training on other labelled images with another policy."""
    from pneumoscan.cli import main

    run = world["runs"][0]
    src = load_checkpoint(run / "best.safetensors")
    out = tmp_path / "site.safetensors"
    assert main(["calibrate", "-m", str(run / "best.safetensors"), "--data", str(world["site"]), "--out", str(out),
                 "--miss-cost", "0", "--target-sensitivity", "0.8", "--cache-dir", str(world["cache"])]) == 0
    new = load_checkpoint(out)
    assert out.with_suffix(".json").is_file()
    for k, v in src.state_dict.items():
        assert torch.equal(v, new.state_dict[k])
    op = new.meta["operating_point"]
    assert op["miss_cost"] == 0.0 and op["target_sensitivity"] == 0.8 and str(world["site"]) in op["chosen_on"]
    assert new.meta["config"]["eval"]["miss_cost"] == 0.0
    assert new.meta["site_calibration"]["previous_operating_point"] == src.meta["operating_point"]
    assert new.meta["site_state"] == "calibrated"
    # The stored threshold is what the rule gives on these images' calibrated scores.
    from pneumoscan.inference.scoring import score_dataset
    records, scored, _ = score_dataset([out], list(index_dataset(world["site"]).records), world["cache"],
                                    torch.device("cpu"), 64, 1, False)
    y = np.array([r.label for r in records])
    # The site rule (issue #26): the previous threshold kept when these films are compatible with the target,
    # else the highest threshold reaching it.
    from pneumoscan.onboarding.site_threshold import carry_threshold, site_threshold
    prev = carry_threshold(src.meta["operating_point"]["threshold"], src.meta["calibration"]["temperature"],
                           new.meta["calibration"]["temperature"])
    assert op["threshold"] == pytest.approx(site_threshold(y, scored[0].probs, prev, target_sensitivity=0.8)["threshold"])
    assert M.sensitivity(y, scored[0].probs, op["threshold"]) >= 0.8 or new.meta["site_calibration"]["compatible"]


def test_calibrate_refuses_training_images_and_its_own_file(world, tmp_path, capsys):
    from pneumoscan.cli import main

    run = world["runs"][0]
    ckpt = run / "best.safetensors"
    # The run's own training folder: its images were trained on.
    assert main(["calibrate", "-m", str(ckpt), "--data", str(world["tmp"] / "train"), "--out", str(tmp_path / "x.safetensors"),
                 "--cache-dir", str(world["cache"])]) == 1
    assert "were used to TRAIN" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()
    assert main(["calibrate", "-m", str(ckpt), "--data", str(world["eval"]), "--out", str(ckpt)]) == 2


def test_scores_csv_text_cells_never_start_like_a_formula(tmp_path):
    from resultfactory import scored

    from pneumoscan.data import Record
    from pneumoscan.evaluation.evaluate import SCORES_COLUMNS, write_scores

    records = [Record("=HYPERLINK(1).png", 1, "-12", "virus"), Record("/data/a.png", 0, "@p", None)]
    write_scores(tmp_path / "s.csv", records, [scored(r.path, p) for r, p in zip(records, (0.25, 1e-9))])
    with open(tmp_path / "s.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == list(SCORES_COLUMNS)
    assert [r["path"] for r in rows] == ["'=HYPERLINK(1).png", "/data/a.png"]
    assert [r["patient_id"] for r in rows] == ["'-12", "'@p"]
    assert [r["probability"] for r in rows] == ["0.250000", "0.000000"] and rows[0]["label"] == "PNEUMONIA"
    assert [r["score"] for r in rows] == ["25.0", "0.0"] and [r["decision"] for r in rows] == ["NORMAL", "NORMAL"]


def test_evaluation_reports_what_the_scope_gate_would_refuse(tmp_path):
    from imagefactory import make_png, synthetic_xray
    from modelfactory import make_checkpoint
    from pneumoscan.evaluation import evaluate

    root = tmp_path / "data"
    for label, seeds in (("NORMAL", range(4)), ("PNEUMONIA", range(4, 8))):
        (root / label).mkdir(parents=True)
        for s in seeds:
            make_png(root / label / f"p{s}.png", synthetic_xray(120, 110, seed=s))
    make_png(root / "NORMAL" / "blank.png", np.full((120, 110), 200, np.uint8))
    ckpt = make_checkpoint(tmp_path / "m.safetensors", threshold=0.5)
    result = evaluate([ckpt], root, tmp_path / "out", cache_dir=tmp_path / "cache", bootstrap_samples=20)
    scope = result["models"][0]["scope"]
    assert scope["n_images"] == 9 and scope["n_out_of_scope"] >= 1 and not scope["feature_check"]
    assert any(o["path"].endswith("blank.png") and o["reason"] == "blank or uniform image" for o in scope["out_of_scope"])
    assert any("scope gate" in w for w in result["models"][0]["warnings"])
    html = (tmp_path / "out" / "report.html").read_text()
    assert "Scope gate" in html and "blank or uniform image" in html


def test_evaluate_without_a_model_uses_the_shipped_one_and_speaks_predicts_vocabulary(tmp_path, monkeypatch):
    """``pneumoscan evaluate --data DIR --out OUT`` needs no --model (as predict and serve), and its scores.csv has
    predict's columns, with the same values for the same films: one result, one decision, one scope verdict."""
    from imagefactory import make_png, varied_film

    from pneumoscan.cli import main

    monkeypatch.delenv("PNEUMOSCAN_MODEL", raising=False)
    root = tmp_path / "labelled"
    for label in ("NORMAL", "PNEUMONIA"):
        (root / label).mkdir(parents=True)
    for label, seeds in (("NORMAL", range(0, 5)), ("PNEUMONIA", range(5, 10))):
        for s in seeds:
            make_png(root / label / f"p{s}_{label.lower()}.png", varied_film(s))
    make_png(root / "NORMAL" / "p99_blank.png", np.full((150, 130), 200, np.uint8))  # out of scope: blank
    out = tmp_path / "eval"
    assert main(["evaluate", "--data", str(root), "--out", str(out), "--bootstrap", "20",
                 "--cache-dir", str(tmp_path / "cache")]) == 0
    with open(out / "scores.csv", newline="") as fh:
        evaluated = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    assert main(["predict", str(root), "-r", "--out", str(tmp_path / "w.csv"), "--no-progress"]) == 0
    with open(tmp_path / "w.csv", newline="") as fh:
        predicted = {Path(r["path"]).name: r for r in csv.DictReader(fh)}
    assert set(evaluated) == set(predicted) and len(predicted) == 11
    for name, row in predicted.items():
        ev = evaluated[name]
        for column in ("decision", "in_scope", "scope_reason", "decision_text", "score_threshold", "model_version"):
            assert ev[column] == row[column], (name, column)
        assert abs(float(ev["probability"]) - float(row["probability"])) <= 1e-5, name
    assert evaluated["p99_blank.png"]["decision"] == "OUT_OF_SCOPE" and evaluated["p99_blank.png"]["score"] == ""
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["models"][0]["checkpoint"].endswith("model.safetensors")
