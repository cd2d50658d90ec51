"""operating_point: the minimum data, the site temperature, cross-fitting, and `pneumoscan calibrate` (refusing the
model's own training films by content, storing the site calibration, working on an adapted model)."""

import json
import shutil

import numpy as np
import pytest
import torch
from scipy.special import expit
from test_train import make_blob_dataset, small_config

from pneumoscan import metrics as M
from pneumoscan.checkpoint import load_checkpoint, save_checkpoint
from pneumoscan.cli import main
from pneumoscan.data import DatasetError, index_dataset
from pneumoscan.onboarding.operating_point import (
    CALIBRATION_TENSOR,
    CROSS_FIT_METHOD,
    _patient_halves,
    check_enough_films,
    choose_temperature,
    cross_fitted_operating_point,
    rechoose_operating_point,
)
from pneumoscan.inference.scoring import score_dataset
from pneumoscan.onboarding.site_threshold import (
    TEMPERATURE_MIN_PER_CLASS,
    carry_threshold,
    site_threshold,
    threshold_curve,
)
from pneumoscan.training import train
from pneumoscan.onboarding.trainset import hash_files, overlap
from pneumoscan.utils import file_sha256

# --- pure functions -----------------------------------------------------------------------------------


def test_minimum_data_is_50_films_with_15_of_each_class():
    check_enough_films([1] * 25 + [0] * 25)
    check_enough_films([1] * 15 + [0] * 35)
    for labels, counts in (([1] * 25 + [0] * 24, "got 49 (25 PNEUMONIA, 24 NORMAL): fewer than 50 films."),
                           ([1] * 14 + [0] * 46, "got 60 (14 PNEUMONIA, 46 NORMAL): fewer than 15 PNEUMONIA films."),
                           ([1] * 10, "got 10 (10 PNEUMONIA, 0 NORMAL): fewer than 50 films and fewer than 15 PNEUMONIA films and fewer than 15 NORMAL")):
        with pytest.raises(DatasetError, match="at least 50 labelled films with at least 15 of each class") as exc:
            check_enough_films(labels)
        assert counts in str(exc.value)


def _logits(n=400, true_t=2.0, seed=0):
    """Labels drawn from sigmoid(u) and logits u * true_t: the right temperature is true_t."""
    rng = np.random.default_rng(seed)
    u = rng.normal(0, 2.5, n)
    y = (rng.random(n) < expit(u)).astype(int)
    return u * true_t, y


def test_site_temperature_is_fitted_when_the_films_can_tell_it():
    z, y = _logits()
    t = choose_temperature(z, y, stored=0.61, stored_fitted_on="validation")
    assert t["source"] == "site" and t["fitted"] == t["temperature"] and 1.6 < t["temperature"] < 2.5
    assert t["nll_used"] < t["nll_stored"] and "fitted" in t["reason"] and t["fitted_on"] == "these films"
    assert t["temperature"] == pytest.approx(M.fit_temperature(z, y))


@pytest.mark.parametrize("case, words", [
    ("few", "only 40 films"), ("one_class_short", "(14 PNEUMONIA"), ("separable", "no minimum"),
    ("bound", "bound"), ("off", "eval.calibrate = false"),
])
def test_site_temperature_keeps_the_stored_one_and_says_why(case, words):
    z, y = _logits()
    enabled = True
    if case == "few":
        z, y = z[:40], y[:40]
    elif case == "one_class_short":
        keep = np.r_[np.flatnonzero(y == 1)[:14], np.flatnonzero(y == 0)[:60]]
        z, y = z[keep], y[keep]
    elif case == "separable":
        z = np.where(y == 1, 1.0, -1.0) * (np.abs(z) + 0.1)
    elif case == "bound":
        z = np.random.default_rng(1).normal(0, 1e-4, y.size)  # no information: the fit runs to T = 20
    else:
        enabled = False
    t = choose_temperature(z, y, stored=0.61, stored_fitted_on="validation", enabled=enabled)
    assert t["source"] == "stored" and t["temperature"] == 0.61 and t["fitted"] is None
    assert words in t["reason"] and "kept the stored temperature (fitted on validation)" in t["reason"]


def _films(n_pos=60, n_neg=40, seed=0):
    """Scores with distinct values: pneumonia films around 0.8, normal films around 0.3."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    s = np.clip(np.where(y == 1, rng.normal(0.8, 0.12, y.size), rng.normal(0.3, 0.15, y.size)), 0.001, 0.999)
    return y, s


def _at_sensitivity(y, s, k):
    """A threshold that finds exactly ``k`` pneumonia films (just above the (k+1)-th highest)."""
    pos = np.sort(s[y == 1])[::-1]
    return float((pos[k - 1] + pos[k]) / 2)


def test_the_current_threshold_is_kept_when_its_sensitivity_is_compatible_with_the_target():
    y, s = _films()
    for k in (60, 57, 55):  # 1.000, 0.950 and 0.917 observed: the exact 95% upper ends are >= 0.95
        current = _at_sensitivity(y, s, k) if k < 60 else float(np.sort(s[y == 1])[0] - 1e-6)
        r = site_threshold(y, s, current, target_sensitivity=0.95)
        assert r["action"] == "kept" and r["threshold"] == current and r["compatible"], k
        assert r["current"]["sensitivity_ci"][1] >= 0.95 and "compatible with the target" in r["reasons"][0]


def test_the_threshold_moves_to_the_highest_reaching_the_target_when_the_films_show_it_misses():
    y, s = _films()
    current = _at_sensitivity(y, s, 50)  # 50 of 60: the exact upper end 0.92 < 0.95
    r = site_threshold(y, s, current, target_sensitivity=0.95)
    assert r["action"] == "lowered" and not r["compatible"]
    assert r["threshold"] == M.threshold_for_sensitivity(y, s, 0.95) < current
    assert "finds only 50 of 60" in r["reasons"][0]
    # With a cost for misses: the lowest-cost threshold among those reaching the target.
    c = site_threshold(y, s, current, target_sensitivity=0.95, miss_cost=3.0)
    assert c["threshold"] == M.threshold_min_cost(y, s, miss_cost=3.0, min_sensitivity=0.95)
    # A model without a threshold gets the highest reaching the target.
    assert site_threshold(y, s, None, target_sensitivity=0.95)["threshold"] == M.threshold_for_sensitivity(y, s, 0.95)


def test_max_false_alarm_rate_raises_the_threshold_only_while_the_target_sensitivity_holds():
    y, s = _films()
    low = float(np.sort(s)[5])  # flags nearly every film: sensitivity 1, many false alarms
    r = site_threshold(y, s, low, target_sensitivity=0.95, max_false_alarm_rate=0.10)
    assert r["action"] == "raised" and r["threshold"] > low and not r["conflict"]
    assert np.mean(s[y == 0] >= r["threshold"]) <= 0.10 and np.mean(s[y == 1] >= r["threshold"]) >= 0.95
    # The lowest such threshold: a step lower lets one more normal film through.
    neg = np.sort(s[y == 0])
    assert np.mean(s[y == 0] >= neg[neg < r["threshold"]].max()) > 0.10
    # A ceiling that the target forbids: sensitivity first, the threshold stays, and it says so.
    s = s.copy()
    s[np.flatnonzero(y == 0)[0]] = 0.999  # a normal film above every pneumonia film: no false alarm costs them all
    t = site_threshold(y, s, low, target_sensitivity=0.95, max_false_alarm_rate=0.0)
    assert t["conflict"] and t["threshold"] == low and t["action"] == "kept"
    assert "cannot both be met" in t["reasons"][-1] and "sensitivity comes first" in t["reasons"][-1]


def test_the_trade_table_marks_the_current_and_the_proposed_threshold():
    y, s = _films()
    rows = threshold_curve(y, s, {"current": 0.5, "proposed": 0.4})
    marks = {r["threshold"]: r["marks"] for r in rows}
    assert marks[0.5] == ["current"] and marks[0.4] == ["proposed"]
    assert [r["threshold"] for r in rows] == sorted((r["threshold"] for r in rows), reverse=True)
    for r in rows:
        assert r["sensitivity_ci"][0] <= r["sensitivity"] <= r["sensitivity_ci"][1]
        assert r["false_alarm_rate"] == pytest.approx(1 - r["specificity"])
    assert carry_threshold(0.3, 2.0, 2.0) == pytest.approx(0.3)
    z = np.log(0.3 / 0.7)  # the same logit decides at the new temperature
    assert expit(z * 2.0 / 1.0) == pytest.approx(carry_threshold(0.3, 2.0, 1.0))


def test_the_temperature_is_not_refitted_on_too_few_films_of_a_class():
    """Issue #26: 100 films with 33 normal moved the temperature 0.61 -> 1.82. Now it needs 50 of each class."""
    z, y = _logits(n=400, true_t=3.0)
    keep = np.r_[np.flatnonzero(y == 1)[:67], np.flatnonzero(y == 0)[:33]]
    t = choose_temperature(z[keep], y[keep], stored=0.61, stored_fitted_on="validation",
                           min_per_class=TEMPERATURE_MIN_PER_CLASS)
    assert t["source"] == "stored" and t["temperature"] == 0.61 and "33 NORMAL" in t["reason"]
    assert f"{TEMPERATURE_MIN_PER_CLASS} of each class" in t["reason"] and t["cross_fitted"] is None
    # Enough films, a real gain: refitted, and better on every held-out fold.
    f = choose_temperature(z, y, stored=0.61, stored_fitted_on="validation", min_per_class=TEMPERATURE_MIN_PER_CLASS)
    assert f["source"] == "site" and all(a < b for a, b in zip(f["cross_fitted"]["nll_refitted"],
                                                                f["cross_fitted"]["nll_stored"]))


def test_the_temperature_is_kept_when_its_gain_does_not_survive_cross_fitting():
    z, y = _logits(n=240, true_t=2.0, seed=4)
    stored = M.fit_temperature(z, y) * 1.03  # within noise of the fit
    t = choose_temperature(z, y, stored=stored, stored_fitted_on="validation")
    assert t["source"] == "stored" and t["temperature"] == stored
    assert "cross-fitting folds" in t["reason"] and t["cross_fitted"]["folds"] == 5


def test_cross_fitting_is_seeded_stratified_and_honest():
    rng = np.random.default_rng(0)
    n = 120
    y = np.r_[np.ones(40, int), np.zeros(80, int)]
    s = np.clip(0.5 * y + rng.normal(0.25, 0.2, n), 0, 1)
    groups = [f"p{i // 2}" for i in range(n)]  # two films per patient, same label
    kw = {"target_sensitivity": 0.95, "miss_cost": 3.0, "n_repeats": 100}
    a = cross_fitted_operating_point(y, s, groups, seed=1, **kw)
    assert a == cross_fitted_operating_point(y, s, groups, seed=1, **kw)
    assert a != cross_fitted_operating_point(y, s, groups, seed=2, **kw)
    assert a["n_repeats"] == 100 and a["n_skipped"] == 0 and a["method"] == CROSS_FIT_METHOD
    for m in ("sensitivity", "specificity"):
        assert 0 <= a[m]["ci"][0] <= a[m]["value"] <= a[m]["ci"][1] <= 1
    # Honest: below what the same rule claims on the films that chose it (sensitivity is chosen >= 0.95 there).
    th = M.threshold_min_cost(y, s, miss_cost=3.0, min_sensitivity=0.95)
    assert M.sensitivity(y, s, th) >= 0.95 and a["sensitivity"]["value"] < M.sensitivity(y, s, th)
    # A monotone rescaling (a temperature) changes nothing: the same films fall on each side.
    logit = np.log(np.clip(s, 1e-9, 1 - 1e-9) / np.clip(1 - s, 1e-9, 1))
    b = cross_fitted_operating_point(y, expit(logit / 0.6), groups, seed=1, **kw)
    assert b["sensitivity"] == a["sensitivity"] and b["specificity"] == a["specificity"]
    # Separable scores: no false alarm ever; but the threshold chosen on one half (the highest reaching the target
    # there) can miss the other half's lowest pneumonia, which the films that chose it never show.
    c = cross_fitted_operating_point(y, y + 0.1 * rng.random(n), groups, seed=0, **kw)
    assert c["specificity"]["ci"] == [1.0, 1.0] and c["sensitivity"]["value"] < 1.0


def test_cross_fitting_halves_keep_patients_whole_and_classes_balanced():
    y = np.r_[np.ones(31, int), np.zeros(50, int)]
    groups = [f"p{i}" for i in range(81)]
    groups[1] = groups[0]  # one patient with two pneumonia films
    rng = np.random.default_rng(0)
    for _ in range(20):
        a = _patient_halves(y, groups, rng)
        assert a[0] == a[1]
        assert int(a[y == 1].sum()) in (14, 16, 15) and int(a[y == 0].sum()) == 25


# --- pneumoscan calibrate ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny trained run (it stores the content hashes of its films) and a 'site' of 60 other films."""
    tmp = tmp_path_factory.mktemp("calibrate")
    train_data = make_blob_dataset(tmp / "train", n_per_class=16, seed=0)
    cfg = small_config(train_data, tmp / "cache", **{"eval.bootstrap_samples": 100})
    run = train(cfg, tmp / "run", progress=False).run_dir
    # A model file away from its run folder: no split.csv beside it, only the content hashes can tell.
    model = tmp / "model" / "m.safetensors"
    model.parent.mkdir()
    ckpt = load_checkpoint(run / "best.safetensors")
    save_checkpoint(model, ckpt.state_dict, ckpt.meta, extra=ckpt.extra)
    site = make_blob_dataset(tmp / "site", n_per_class=30, seed=2)
    files = sorted(train_data.rglob("*.jpeg"))
    ov = overlap(load_checkpoint(model), hash_files(files))
    return {"tmp": tmp, "model": model, "site": site, "cache": tmp / "cache", "train_files": files,
            "train_idx": ov.train, "val_idx": ov.val}


def _site_with(world, tmp_path, picks, name="site"):
    """A copy of the site folder plus renamed copies of some of the model's own films."""
    site = tmp_path / name
    shutil.copytree(world["site"], site)
    for k, i in enumerate(picks):
        src = world["train_files"][i]
        shutil.copy(src, site / src.parent.name / f"renamed_{k}.jpeg")
    return site


def test_calibrate_prints_and_stores_the_site_calibration(world, tmp_path, capsys):
    out = tmp_path / "site.safetensors"
    assert main(["calibrate", "-m", str(world["model"]), "--data", str(world["site"]), "--out", str(out),
                 "--cache-dir", str(world["cache"]), "--repeats", "50", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    src, new = load_checkpoint(world["model"]), load_checkpoint(out)
    s = new.meta["site_calibration"]
    assert new.meta["site_state"] == "calibrated" and not s["adapted"]
    assert s["n_images"] == 60 and s["n_pneumonia"] == 30 and s["n_normal"] == 30 and s["n_in_validation_set"] == 0
    assert s["parent_sha256"] == file_sha256(world["model"]) and s["data"] == str(world["site"]) and s["date"]
    assert s["training_films_checked"] and s["method"] == f"site rule: {s['action']}"
    assert s["action"] in ("kept", "lowered", "raised") and s["target_sensitivity"] == 0.95
    cf = s["cross_fitted"]
    assert cf["n_repeats"] == 50 and cf["seed"] == 3 and "percentiles of the repeats" in cf["method"]
    for m in ("sensitivity", "specificity"):
        assert cf[m]["ci"][0] <= cf[m]["value"] <= cf[m]["ci"][1]
        assert f"{m} {cf[m]['value']:.3f} (95% interval {cf[m]['ci'][0]:.3f} to {cf[m]['ci'][1]:.3f}" in printed
    assert f"threshold: {s['threshold']:.4f}: {s['action']}" in printed and "films: 60 (30 PNEUMONIA, 30 NORMAL)" in printed
    assert "The trade on these 60 films" in printed and "current" in printed and "proposed" in printed
    assert "percentiles of the repeats" in printed and "site state: calibrated" in printed
    # The temperature: fitted on these films or the stored one, and it says which and why.
    flat = printed.replace("\n", " ")
    if s["temperature_source"] == "site":
        assert f"temperature: {s['temperature']:.3f}, refitted on these films" in flat
    else:
        assert s["temperature_source"] == "stored" and s["temperature_reason"] in flat
    assert new.meta["calibration"]["temperature"] == s["temperature"]
    if s["temperature_source"] == "stored":
        assert s["temperature"] == src.meta["calibration"]["temperature"]
    # The threshold is the rule applied to the probabilities at that temperature.
    records, scored, _ = score_dataset([out], list(index_dataset(world["site"]).records), world["cache"],
                                       torch.device("cpu"), 64, 1, False)
    y = np.array([r.label for r in records])
    current = carry_threshold(src.meta["operating_point"]["threshold"], src.meta["calibration"]["temperature"],
                              s["temperature"])
    assert s["threshold"] == pytest.approx(site_threshold(y, scored[0].probs, current, target_sensitivity=0.95)["threshold"])
    assert new.meta["operating_point"]["threshold"] == s["threshold"]
    # Same weights, every extra tensor kept (reference and trainset), plus the hashes of the films that chose it.
    assert all(torch.equal(v, new.state_dict[k]) for k, v in src.state_dict.items())
    assert all(torch.equal(v, new.extra[k]) for k, v in src.extra.items()) and "trainset.train" in new.extra
    assert set(new.extra) - set(src.extra) == {CALIBRATION_TENSOR} and new.extra[CALIBRATION_TENSOR].numel() == 60
    assert json.loads(out.with_suffix(".json").read_text())["site_state"] == "calibrated"
    # Evaluating the calibrated model on the films that chose its threshold says so.
    ev = tmp_path / "ev"
    assert main(["evaluate", "-m", str(out), "--data", str(world["site"]), "--out", str(ev),
                 "--cache-dir", str(world["cache"]), "--bootstrap", "50"]) == 0
    m = json.loads((ev / "metrics.json").read_text())["models"][0]
    assert m["training_overlap"]["n_calibration"] == 60 and m["training_overlap"]["n_train"] == 0
    assert [a["kind"] for a in m["training_alerts"]] == ["calibration"]
    html = (ev / "report.html").read_text()
    assert 'id="m1-calibration-images"' in html and f"chosen on {world['site']}" in html


def test_calibrate_dry_run_shows_the_trade_and_writes_nothing(world, tmp_path, capsys):
    out = tmp_path / "dry.safetensors"
    assert main(["calibrate", "-m", str(world["model"]), "--data", str(world["site"]), "--out", str(out),
                 "--cache-dir", str(world["cache"]), "--repeats", "20", "--dry-run",
                 "--max-false-alarm-rate", "0.2"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert not out.exists() and not out.with_suffix(".json").exists()
    assert "The trade on these 60 films" in printed and "dry run: nothing written" in printed
    assert "Decision support, not a diagnosis" in printed
    r = rechoose_operating_point(world["model"], world["site"], out, cache_dir=world["cache"], n_repeats=20,
                                 dry_run=True, max_false_alarm_rate=0.2)
    assert r["written"] is False and not out.exists() and r["site_calibration"]["max_false_alarm_rate"] == 0.2
    proposed = r["trade"]["proposed"]
    # The ceiling is met, or it is not and sensitivity was kept (and the result says so).
    assert proposed["false_alarm_rate"] <= 0.2 or r["trade"]["conflict"]
    assert any(row["marks"] for row in r["trade"]["curve"])
    # Writing: --max-false-alarm-rate is recorded; an existing --out is never replaced.
    assert main(["calibrate", "-m", str(world["model"]), "--data", str(world["site"]), "--out", str(out),
                 "--cache-dir", str(world["cache"]), "--repeats", "20", "--max-false-alarm-rate", "0.2"]) == 0
    assert load_checkpoint(out).meta["site_calibration"]["max_false_alarm_rate"] == 0.2
    before = out.stat().st_mtime_ns
    assert main(["calibrate", "-m", str(world["model"]), "--data", str(world["site"]), "--out", str(out),
                 "--cache-dir", str(world["cache"])]) == 2
    assert "never replaces" in capsys.readouterr().err and out.stat().st_mtime_ns == before
    assert main(["calibrate", "-m", str(world["model"]), "--data", str(world["site"]), "--out", str(tmp_path / "b.st"),
                 "--max-false-alarm-rate", "1.5"]) == 2


def test_calibrate_works_on_an_adapted_model(world, tmp_path, capsys):
    src = load_checkpoint(world["model"])
    state = {k: v.clone() for k, v in src.state_dict.items()}
    for k in state:
        if k.endswith("running_mean"):
            state[k] += 0.05  # what adaptation changes: BatchNorm statistics
    adapted = tmp_path / "adapted.safetensors"
    meta = {**src.meta, "adaptation": {"method": "AdaBN", "n_images": 120, "parent_sha256": "0" * 64},
            "site_state": "adapted"}
    save_checkpoint(adapted, state, meta, extra=src.extra)
    out = tmp_path / "cal.safetensors"
    r = rechoose_operating_point(adapted, world["site"], out, cache_dir=world["cache"], n_repeats=20)
    new = load_checkpoint(out)
    assert new.meta["site_state"] == "adapted and calibrated" and new.meta["site_calibration"]["adapted"]
    assert new.meta["adaptation"] == meta["adaptation"] and r["site_calibration"]["parent_sha256"] == file_sha256(adapted)
    assert all(torch.equal(v, new.state_dict[k]) for k, v in state.items())
    assert set(new.extra) == set(src.extra) | {CALIBRATION_TENSOR}


def test_calibrate_refuses_renamed_training_films_by_content(world, tmp_path, capsys):
    site = _site_with(world, tmp_path, world["train_idx"][:4])
    out = tmp_path / "x.safetensors"
    assert main(["calibrate", "-m", str(world["model"]), "--data", str(site), "--out", str(out),
                 "--cache-dir", str(world["cache"])]) == 1
    err = capsys.readouterr().err
    assert "4 of the 64 images (by image content: 4; e.g. renamed_" in err and "were used to TRAIN" in err
    assert not out.exists()
    # Refused before anything else, even when there are too few films.
    few = _site_with(world, tmp_path, world["train_idx"][:2], name="few")
    for p in [p for p in sorted(few.rglob("*.jpeg")) if not p.name.startswith("renamed_")][:40]:
        p.unlink()
    with pytest.raises(DatasetError, match="were used to TRAIN"):
        rechoose_operating_point(world["model"], few, out, cache_dir=world["cache"])


def test_calibrate_allows_validation_films_and_counts_them(world, tmp_path, capsys):
    site = _site_with(world, tmp_path, world["val_idx"][:3])
    out = tmp_path / "v.safetensors"
    assert main(["calibrate", "-m", str(world["model"]), "--data", str(site), "--out", str(out),
                 "--cache-dir", str(world["cache"]), "--repeats", "20"]) == 0
    assert "3 of these films are in the model's validation set" in capsys.readouterr().out
    assert load_checkpoint(out).meta["site_calibration"]["n_in_validation_set"] == 3


def test_calibrate_refuses_too_few_films_with_the_counts(world, tmp_path, capsys):
    site = tmp_path / "small"
    shutil.copytree(world["site"], site)
    for p in sorted((site / "PNEUMONIA").iterdir())[:16]:
        p.unlink()  # 14 PNEUMONIA, 30 NORMAL
    out = tmp_path / "x.safetensors"
    assert main(["calibrate", "-m", str(world["model"]), "--data", str(site), "--out", str(out),
                 "--cache-dir", str(world["cache"])]) == 1
    err = capsys.readouterr().err
    assert "got 44 (14 PNEUMONIA, 30 NORMAL)" in err and "at least 50 labelled films" in err and not out.exists()


def test_evaluate_warns_loudly_on_renamed_training_films(world, tmp_path, capsys):
    site = tmp_path / "ev"
    (site / "NORMAL").mkdir(parents=True)
    (site / "PNEUMONIA").mkdir()
    for k, i in enumerate(world["train_idx"][:6] + world["val_idx"][:2]):
        src = world["train_files"][i]
        shutil.copy(src, site / src.parent.name / f"copy_{k}.jpeg")
    out = tmp_path / "out"
    assert main(["evaluate", "-m", str(world["model"]), "--data", str(site), "--out", str(out),
                 "--cache-dir", str(world["cache"]), "--bootstrap", "50"]) == 0
    printed = capsys.readouterr().out.replace("\n", " ")
    assert "WARNING: NOT A VALID EVALUATION" in printed and "6 of the 8 images (by image content: 6" in printed
    assert "VALIDATION images" in printed
    m = json.loads((out / "metrics.json").read_text())["models"][0]
    assert m["training_overlap"]["n_train"] == 6 and m["training_overlap"]["n_val"] == 2
    assert [a["kind"] for a in m["training_alerts"]] == ["train", "val"]
    html = (out / "report.html").read_text()
    assert html.index('id="m1-train-images"') < html.index('id="summary"')  # at the top, before the numbers
    assert 'class="alarm train" role="alert"' in html and "Not a valid evaluation" in html
    assert html.count("were used to TRAIN this model") == 1  # the box, not repeated as a plain warning


# --- the shipped model, with films from the shared data set --------------------------------------------


@pytest.mark.shared_data
def test_shipped_model_refuses_and_flags_20_renamed_training_films(shared_data_root, tmp_path, capsys):
    from pneumoscan.inference.predictor import default_model_path

    model = default_model_path()
    ckpt = load_checkpoint(model)
    site = tmp_path / "site"
    for cls in ("NORMAL", "PNEUMONIA"):
        files = sorted((shared_data_root / "train" / cls).glob("*.jpeg"))[:20]
        ov = overlap(ckpt, hash_files(files))
        assert len(ov.train) >= 10
        (site / cls).mkdir(parents=True)
        for k, i in enumerate(ov.train[:10]):
            shutil.copy(files[i], site / cls / f"site_{cls.lower()}_{k:03d}.jpeg")  # renamed: paths cannot tell
    out = tmp_path / "cal.safetensors"
    assert main(["calibrate", "-m", str(model), "--data", str(site), "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache")]) == 1
    assert "20 of the 20 images (by image content: 20; e.g. site_" in capsys.readouterr().err and not out.exists()
    assert main(["evaluate", "-m", str(model), "--data", str(site), "--out", str(tmp_path / "ev"),
                 "--cache-dir", str(tmp_path / "cache"), "--bootstrap", "50", "--device", "cpu"]) == 0
    assert "WARNING: NOT A VALID EVALUATION" in capsys.readouterr().out
    html = (tmp_path / "ev" / "report.html").read_text()
    assert 'id="m1-train-images"' in html
