"""Site onboarding without labels (``pneumoscan.onboarding.site``, ``pneumoscan adapt``): AdaBN, EM prevalence, the site
reference, the refusals, and the provenance that predict shows.

A tiny deep-cnn (it has BatchNorm) at 64 px with randomised BatchNorm statistics, a reference built from synthetic
films of the same generator as the site's, and content hashes that put 4 of the site's films in its validation
set. The last test adapts the shipped model on real validation films with a contrast shift (needs shared data).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from imagefactory import make_png, synthetic_xray, varied_film
from modelfactory import checkpoint_meta, make_checkpoint, randomize_batchnorm

from pneumoscan.checkpoint import load_checkpoint, save_checkpoint
from pneumoscan.cli import main
from pneumoscan.models import create_model, default_preprocessing
from pneumoscan.inference.predictor import Predictor
from pneumoscan.preprocessing import cached_rows_to_unit, normalize, resize_for_model
from pneumoscan.onboarding.adabn import (
    MIX_MAX_DISAGREEMENT,
    MixCheck,
    bbse_prevalence,
    label_shift_weights,
    mix_check,
)
from pneumoscan.onboarding.reference_builder import build_reference
from pneumoscan.onboarding.site import (
    ADAPT_TENSOR,
    MIN_SITE_IMAGES,
    AdaptationError,
    adabn,
    adapt,
    em_prevalence,
    image_set_sha256,
    provenance,
    provenance_line,
    site_state,
)
from pneumoscan.onboarding.trainset import hash_files, trainset_tensors
from pneumoscan.utils import file_sha256

N_SITE = 200  # two halves of 100: the adapted model gets a drift check
SIZE = 64
BN_STATS = ("running_mean", "running_var", "num_batches_tracked")


def _deep_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return randomize_batchnorm(create_model("deep-cnn"), 0).eval()


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """N_SITE films, a copy of one of them, one blank image (out of scope) and one broken file; flat, no labels."""
    root = tmp_path_factory.mktemp("site")
    for i in range(N_SITE):
        make_png(root / f"film{i:03d}.png", varied_film(i))
    make_png(root / "copy-of-film000.png", varied_film(0))
    make_png(root / "zz-blank.png", np.full((120, 100), 200, np.uint8))
    (root / "zz-broken.png").write_text("not a picture")
    return root


def _parent(path: Path, site: Path, *, train_films: list[Path] = (), val_films: list[Path] = ()) -> Path:
    """A deep-cnn checkpoint with a reference from other films of the same kind and the given trainset hashes."""
    spec = default_preprocessing("deep-cnn", SIZE)
    model = _deep_model()
    squares = np.stack([resize_for_model(varied_film(1000 + i), spec) for i in range(100)])
    ref = build_reference(model, squares, np.arange(50), np.arange(50, 100), spec, bank_size=50)
    ref.knn_cut *= 2  # every synthetic film in scope, so that the counts below are exact (blank images still out)
    meta = {**checkpoint_meta("deep-cnn", SIZE, threshold=0.5, temperature=1.5), "reference": ref.to_meta(),
            "val_summary": {"prevalence": 0.6}}
    hashes = trainset_tensors(hash_files([_film_png(path.parent, 5000)] + list(train_films)), hash_files(val_films))
    return save_checkpoint(path, model.state_dict(), meta, extra={**ref.to_tensors(), **hashes})


def _film_png(folder: Path, seed: int) -> Path:
    return make_png(folder / f"train{seed}.png", varied_film(seed))


@pytest.fixture(scope="module")
def parent(tmp_path_factory, site) -> Path:
    """Its validation set holds 4 of the site's films (a warning), its training set none of them."""
    folder = tmp_path_factory.mktemp("parent")
    return _parent(folder / "parent.safetensors", site, val_films=sorted(site.glob("film*.png"))[:4])


@pytest.fixture(scope="module")
def adapted(parent, site, tmp_path_factory) -> tuple[Path, str]:
    """``pneumoscan adapt`` on the site folder: the new checkpoint and what the command printed."""
    out = tmp_path_factory.mktemp("adapted") / "site.safetensors"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["adapt", "--model", str(parent), "--data", str(site), "--out", str(out), "--no-progress"])
    assert code == 0, buf.getvalue()
    return out, " ".join(buf.getvalue().split())


# ----------------------------------------------------------------------------- EM and AdaBN, alone


@pytest.mark.parametrize("true_prevalence, training_prevalence", [(0.2, 0.5), (0.45, 0.77), (0.85, 0.3)])
def test_em_recovers_a_known_prevalence(true_prevalence, training_prevalence):
    """Scores calibrated under the training prior on a site with another prior: EM finds the site's prior."""
    rng = np.random.default_rng(1)
    n = 40_000
    y = rng.random(n) < true_prevalence
    x = rng.normal(np.where(y, 1.0, -1.0), 1.0)  # likelihood ratio exp(2x)
    lr = np.exp(2 * x)
    p = training_prevalence * lr / (training_prevalence * lr + 1 - training_prevalence)  # calibrated at training
    est = em_prevalence(p, training_prevalence)
    assert est.converged and est.prevalence == pytest.approx(true_prevalence, abs=0.015)
    assert abs(p.mean() - true_prevalence) > abs(est.prevalence - true_prevalence)  # better than the mean score


def test_em_edge_cases():
    assert em_prevalence(np.full(50, 0.3), 0.3).prevalence == pytest.approx(0.3)
    assert em_prevalence(np.zeros(10), 0.5).prevalence < 1e-3  # saturated scores do not break it
    with pytest.raises(ValueError):
        em_prevalence(np.array([0.5]), 1.0)
    with pytest.raises(ValueError):
        em_prevalence(np.array([]), 0.5)


def test_adabn_re_estimates_batchnorm_statistics_and_nothing_else():
    spec = default_preprocessing("deep-cnn", SIZE)
    model = _deep_model()
    squares = np.stack([resize_for_model(varied_film(i), spec) for i in range(72)])  # 3 batches of 24
    before = {k: v.clone() for k, v in model.state_dict().items()}
    momentum = model.stem[1].momentum
    assert adabn(model, squares, spec, batch_size=32) == 20
    after = model.state_dict()
    for k, v in before.items():
        if k.endswith(BN_STATS):
            assert not torch.equal(v, after[k]), k
        else:
            assert torch.equal(v, after[k]), k
    assert not model.training and model.stem[1].momentum == momentum
    # The stem's BatchNorm sees the first convolution's output, which AdaBN does not change: its running mean
    # is the mean over every pixel of every film (equal batches, so the cumulative average is exact).
    with torch.no_grad():
        conv = model.stem[0](normalize(cached_rows_to_unit(squares, np.arange(len(squares))), spec))
    assert torch.allclose(model.stem[1].running_mean, conv.mean(dim=(0, 2, 3)), atol=1e-4)


def test_class_balanced_statistics_equal_those_of_a_balanced_batch():
    """6 'normal' and 2 'pneumonia' films (a site at 25%) weighted to a 50% training mix: the statistics are those
    of plain AdaBN on one balanced batch, the 6 normal films and each pneumonia film three times."""
    spec = default_preprocessing("deep-cnn", SIZE)
    squares = np.stack([resize_for_model(varied_film(300 + i), spec) for i in range(8)])
    y = np.r_[np.zeros(6), np.ones(2)]
    w = label_shift_weights(y, 0.5, 0.25)  # crisp posteriors: w1 / w0 = (0.5 / 0.25) / (0.5 / 0.75) = 3
    assert w[6] / w[0] == pytest.approx(3.0) and w.mean() == pytest.approx(1.0)
    weighted, balanced = _deep_model(), _deep_model()
    adabn(weighted, squares, spec, weights=w, batch_size=64)
    adabn(balanced, np.concatenate([squares[:6]] + [squares[6:]] * 3), spec, batch_size=64)
    n_checked = 0
    for (name, a), b in zip(weighted.state_dict().items(), balanced.state_dict().values()):
        if name.endswith("running_mean"):
            assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), name
            n_checked += 1
        elif name.endswith("running_var"):  # the same up to torch's m / (m - 1): 8 films against 12
            assert torch.allclose(a, b, atol=1e-4, rtol=3e-2), name
    assert n_checked == 20
    # Equal weights are plain AdaBN; a different mix gives other statistics.
    plain, uniform = _deep_model(), _deep_model()
    adabn(plain, squares, spec, batch_size=64)
    adabn(uniform, squares, spec, weights=np.ones(8), batch_size=64)
    assert torch.allclose(plain.stem[1].running_mean, uniform.stem[1].running_mean, atol=1e-5)
    assert not torch.allclose(plain.stem[1].running_mean, weighted.stem[1].running_mean, atol=1e-4)
    with pytest.raises(AdaptationError, match="weights"):
        adabn(plain, squares, spec, weights=np.zeros(8))


def test_label_shift_weights_reach_the_training_mix_and_are_bounded():
    rng = np.random.default_rng(0)
    y = rng.random(4000) < 0.2
    x = rng.normal(np.where(y, 1.0, -1.0), 1.0)  # a film's features: N(1, 1) with pneumonia, N(-1, 1) without
    lr = np.exp(2 * x)
    p = 0.77 * lr / (0.77 * lr + 0.23)  # calibrated at the training mix, 77%
    w = label_shift_weights(p, 0.77, 0.2)
    # What BatchNorm sees is a function of the film: weighted, the site's films have the training mix's statistics.
    assert x.mean() == pytest.approx(0.2 - 0.8, abs=0.05)
    assert np.average(x, weights=w) == pytest.approx(0.77 - 0.23, abs=0.05)
    assert np.average((x - 0.54) ** 2, weights=w) == pytest.approx(1 + 4 * 0.77 * 0.23, abs=0.1)
    assert w.max() / w.min() <= 10.0 * 10.0 + 1e-9


def test_the_mix_check_says_when_the_estimate_is_unreliable():
    rng = np.random.default_rng(3)
    y = rng.random(300) < 0.3
    lr = np.exp(3 * rng.normal(np.where(y, 1.0, -1.0), 1.0))
    p = 0.77 * lr / (0.77 * lr + 0.23)
    youden = {"bbse_threshold": 0.5, "bbse_sensitivity": float(np.mean(p[y] >= 0.5)),
              "bbse_specificity": float(np.mean(p[~y] < 0.5))}
    ok = mix_check(p, 0.77, probs_adapted=p, **youden)
    assert ok.reliable and not ok.reasons and ok.prevalence == pytest.approx(0.3, abs=0.06)
    assert ok.bbse == pytest.approx(ok.prevalence, abs=MIX_MAX_DISAGREEMENT)
    assert ok.bootstrap_ci[0] < ok.prevalence < ok.bootstrap_ci[1]
    # The adapted model flags far more than EM expects: BBSE disagrees.
    bad = mix_check(p, 0.77, probs_adapted=np.clip(p + 0.4, 0, 1), **youden)
    assert not bad.reliable and "BBSE" in bad.reasons[0] and bad.to_dict()["reliable"] is False
    # Ten films: the bootstrap interval is wide.
    few = mix_check(p[:10], 0.77)
    assert not few.reliable and "bootstrap 95% interval is wide" in few.reasons[-1]
    assert bbse_prevalence(0.5, 0.9, 0.9) == pytest.approx(0.5) and bbse_prevalence(0.3, 0.5, 0.4) is None


def test_adapt_warns_and_records_an_unreliable_estimate_of_the_mix(parent, site, tmp_path, monkeypatch):
    import pneumoscan.onboarding.site as site_module

    def unreliable(probs_parent, training_prevalence, **kw):
        return MixCheck(prevalence=0.456, bootstrap_ci=[0.2, 0.7], bbse=0.2, em_adapted=0.4, reliable=False,
                        reasons=["EM gives 46% but BBSE gives 20%"])

    monkeypatch.setattr(site_module, "mix_check", unreliable)
    out = tmp_path / "u.safetensors"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = main(["adapt", "--model", str(parent), "--data", str(site), "--out", str(out), "--no-progress"])
    printed = " ".join(buf.getvalue().split())
    assert code == 0, printed
    assert "UNRELIABLE, see the warning" in printed
    assert "warning: the estimate of this site's share of pneumonia (46%) is UNRELIABLE: EM gives 46% but BBSE" \
        in printed
    a = load_checkpoint(out).meta["adaptation"]
    assert a["prevalence_reliable"] is False and a["prevalence_check"]["reasons"] == ["EM gives 46% but BBSE gives 20%"]
    assert any("UNRELIABLE" in w for w in a["warnings"])


def test_site_state_and_provenance_line():
    assert site_state({}) == "shipped" and provenance_line({}) == ""
    ad = {"date": "2026-11-26T10:00:00Z", "n_images": 312, "parent_model_sha256": "e4d5bf9a2f72" + "0" * 52}
    assert site_state({"adaptation": ad}) == "adapted"
    assert provenance_line({"adaptation": ad}) == ("Model adapted at this site on 2026-11-26 from 312 films "
                                                   "(parent e4d5bf9a2f72)")
    cal = {"created": "2026-12-01T08:00:00Z", "n_images": 104, "threshold": 0.71}
    assert site_state({"site_calibration": cal}) == "calibrated"
    assert provenance_line({"site_calibration": cal}) == ("Threshold calibrated at this site on 2026-12-01 on 104 "
                                                          "labelled films (threshold 0.710)")
    both = {"adaptation": ad, "site_calibration": {"n_labelled": 100}, "operating_point": {"threshold": 0.6}}
    assert site_state(both) == "adapted and calibrated"
    assert provenance_line(both).endswith("; threshold calibrated at this site on 100 labelled films (threshold 0.600)")
    assert provenance(both)["site_state"] == "adapted and calibrated" and provenance({})["adaptation"] is None


# ----------------------------------------------------------------------------- refusals


def test_a_model_without_batchnorm_is_refused(tmp_path, site):
    ckpt = make_checkpoint(tmp_path / "seed.safetensors", "seed-cnn", SIZE, threshold=0.5)
    with pytest.raises(AdaptationError, match="has no BatchNorm layers.*pneumoscan calibrate"):
        adapt(ckpt, sorted(site.glob("film*.png")), tmp_path / "out.safetensors")
    assert not (tmp_path / "out.safetensors").exists()


def test_fewer_than_100_in_scope_films_are_refused_with_the_counts(parent, site, tmp_path):
    files = sorted(site.glob("film*.png"))[:95] + [site / "zz-blank.png", site / "zz-broken.png"]
    with pytest.raises(AdaptationError) as err:
        adapt(parent, files, tmp_path / "out.safetensors")
    text = str(err.value)
    assert "only 95 in-scope film(s) of 97 file(s) (1 out of scope, 1 unreadable, 0 duplicate(s))" in text
    assert "at least 100" in text and "blank or uniform image" in text
    assert not (tmp_path / "out.safetensors").exists()
    with pytest.raises(ValueError, match="at least 100"):
        adapt(parent, files, tmp_path / "out.safetensors", min_images=50)


def test_films_the_model_trained_on_are_refused_by_content(site, tmp_path, monkeypatch):
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    trained = [make_png(renamed / f"x{i}.png", varied_film(i)) for i in (7, 8, 9)]  # the site's films, other names
    ckpt = _parent(tmp_path / "p.safetensors", site, train_films=trained)
    monkeypatch.setattr(Predictor, "score_files", lambda *a, **k: pytest.fail("scored before the content check"))
    with pytest.raises(AdaptationError) as err:
        adapt(ckpt, sorted(site.glob("film*.png")), tmp_path / "out.safetensors")
    text = str(err.value)
    assert f"3 of the {N_SITE} files are films this model was TRAINED on" in text and "film007.png" in text


def test_onnx_and_existing_outputs_are_refused(parent, site, tmp_path):
    files = sorted(site.glob("film*.png"))
    (tmp_path / "m.onnx").write_bytes(b"x")
    with pytest.raises(AdaptationError, match="ONNX export cannot be adapted"):
        adapt(tmp_path / "m.onnx", files, tmp_path / "out.safetensors")
    with pytest.raises(AdaptationError, match="never replaces"):
        adapt(parent, files, parent)
    with pytest.raises(AdaptationError, match="must be a .safetensors"):
        adapt(parent, files, tmp_path / "out.pt")


# ----------------------------------------------------------------------------- the adapted checkpoint


def test_adapt_prints_what_it_did(adapted, parent):
    _, printed = adapted
    assert "Model adapted at this site on" in printed
    assert f"from {N_SITE} films (parent {file_sha256(parent)[:12]})" in printed
    assert f"used {N_SITE} in-scope film(s) of {N_SITE + 3} file(s): 1 out of scope, 1 unreadable, 1 duplicate(s)" in printed
    assert "BatchNorm statistics re-estimated in 20 layer(s) (class-balanced AdaBN" in printed
    assert "estimated pneumonia prevalence among these films (EM)" in printed and "training prevalence 60.0%" in printed
    assert "bootstrap 95% interval" in printed
    assert "100 form the reference, 100 set its cut-off; drift check available" in printed
    assert "warning: 5 of the files are films of this model's validation set" in printed  # 4, and the copy of one
    assert "pneumoscan calibrate" in printed


def test_the_adapted_checkpoint_records_its_provenance(adapted, parent, site):
    out, _ = adapted
    ckpt = load_checkpoint(out)
    a = ckpt.meta["adaptation"]
    films = sorted(site.glob("film*.png"))
    assert ckpt.meta["site_state"] == "adapted" and site_state(ckpt.meta) == "adapted"
    assert a["method"] == "AdaBN, class-balanced" and a["balanced"] and a["n_images"] == N_SITE
    assert a["balance_weights"]["target_prevalence"] == pytest.approx(0.6)
    assert a["prevalence_check"]["prevalence"] == a["prevalence_em"] and isinstance(a["prevalence_reliable"], bool)
    assert (a["n_files"], a["n_out_of_scope"], a["n_unreadable"], a["n_duplicates"], a["n_refused"]) == (
        N_SITE + 3, 1, 1, 1, 3)
    assert a["out_of_scope_reasons"] == {"blank or uniform image": 1}
    assert a["n_in_validation_set"] == 5 and any("validation set" in w for w in a["warnings"])
    assert a["image_set_sha256"] == image_set_sha256(hash_files(films[::-1]))  # any order, same set
    assert a["parent_model_sha256"] == file_sha256(parent) and a["parent_model_path"] == str(parent)
    assert a["date"].endswith("Z") and a["training_prevalence"] == pytest.approx(0.6)
    assert 0.0 <= a["prevalence_em"] <= 1.0 and a["threshold"] == 0.5 and a["temperature"] == 1.5
    assert a["reference"] == {"n_bank": 100, "n_val": 100, "drift_available": True,
                              "knn_cut": pytest.approx(a["reference"]["knn_cut"]), "drift_needs_val": 100}
    # Operating point and calibration as the parent's; the parent's trainset hashes kept, the site's added.
    src = load_checkpoint(parent)
    assert ckpt.meta["operating_point"] == src.meta["operating_point"]
    assert ckpt.meta["calibration"] == src.meta["calibration"]
    for role in ("train", "val"):
        assert torch.equal(ckpt.extra[f"trainset.{role}"], src.extra[f"trainset.{role}"])
    assert sorted(ckpt.extra[ADAPT_TENSOR].tolist()) == sorted(set(hash_files(films)))
    assert json.loads(out.with_suffix(".json").read_text())["adaptation"]["n_images"] == N_SITE


def test_adaptation_changes_the_batchnorm_statistics_and_nothing_else(adapted, parent):
    new, old = load_checkpoint(adapted[0]).state_dict, load_checkpoint(parent).state_dict
    assert new.keys() == old.keys()
    changed = [k for k in old if not torch.equal(old[k], new[k])]
    assert changed and all(k.endswith(BN_STATS) for k in changed)
    assert sum(k.endswith("running_var") for k in changed) == 20  # every BatchNorm of deep-cnn


def test_the_adapted_model_predicts_and_gates_with_the_site_reference(adapted, parent, site):
    p = Predictor.from_checkpoint(adapted[0])
    a = p.adaptation
    parent_ref = Predictor.from_checkpoint(parent).reference
    assert p.reference is not None and p.gate.reference is p.reference
    assert p.reference.info["kind"] == "site" and p.reference.bank.shape[0] == 100
    assert p.reference.knn_cut == pytest.approx(a["reference"]["knn_cut"])
    assert p.reference.knn_cut != pytest.approx(parent_ref.knn_cut)
    assert a["n_images"] == N_SITE and p.site_calibration is None
    results = p.score_files(sorted(site.glob("film*.png"))[:120])
    assert all(r.probability is not None for r in results)
    assert sum(not r.in_scope for r in results) <= 3  # the cut-off leaves about 1% of the site's own films out
    assert p.predict(np.full((120, 100), 200, np.uint8))[0].label == "OUT_OF_SCOPE"
    # The drift check compares with the site's films, and its case-mix note with their estimated prevalence.
    assert p.drift is not None and p.drift.prevalence == pytest.approx(a["prevalence_em"])
    assert p.check_drift(results).shifted is False


def test_predict_shows_the_provenance(adapted, parent, site, tmp_path, capsys):
    out, _ = adapted
    worklist = tmp_path / "w.json"
    films = sorted(site.glob("film*.png"))[:5]
    assert main(["predict", *map(str, films), "--model", str(out), "--out", str(worklist), "--no-progress"]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "Model adapted at this site on " in printed and f"from {N_SITE} films (parent " in printed
    doc = json.loads(worklist.read_text())
    assert doc["site_state"] == "adapted" and doc["adaptation"]["n_images"] == N_SITE
    assert doc["provenance"].startswith("Model adapted at this site") and doc["site_calibration"] is None
    assert main(["predict", *map(str, films), "--model", str(parent), "--no-progress"]) == 0
    assert "adapted at this site" not in capsys.readouterr().out


def test_adapt_never_writes_over_a_file(adapted, parent, site, capsys):
    out, _ = adapted
    before = out.stat().st_mtime_ns
    assert main(["adapt", "--model", str(parent), "--data", str(site), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and out.stat().st_mtime_ns == before


def test_adapt_command_refusals_are_one_line(tmp_path, site, capsys):
    ckpt = make_checkpoint(tmp_path / "seed.safetensors", "seed-cnn", SIZE, threshold=0.5)
    assert main(["adapt", "--model", str(ckpt), "--data", str(site), "--out", str(tmp_path / "o.safetensors")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("pneumoscan: error:") and "no BatchNorm" in err and len(err.strip().splitlines()) == 1
    assert main(["adapt", "--model", str(ckpt), "--data", str(site), "--out", str(tmp_path / "o.safetensors"),
                 "--min-images", "50"]) == 2
    assert main(["adapt", "--model", str(ckpt), "--data", str(site), "--out", str(tmp_path / "o.pt")]) == 2


def test_the_command_line_default_matches_the_library():
    from pneumoscan.cli.adapt_cmd import MIN_SITE_IMAGES_DEFAULT

    assert MIN_SITE_IMAGES_DEFAULT == MIN_SITE_IMAGES


# ----------------------------------------------------------------------------- the shipped model, real films


@pytest.mark.shared_data
@pytest.mark.slow
def test_adapting_the_shipped_model_on_contrast_shifted_validation_films(shared_data_root, tmp_path):
    from pneumoscan.data import index_dataset, split_index
    from pneumoscan.io import read_image
    from pneumoscan.inference.predictor import PACKAGED_MODEL

    shipped = load_checkpoint(PACKAGED_MODEL)
    cfg = shipped.info.config["data"]
    _, val = split_index(index_dataset(shared_data_root, split=cfg["split"], check=False), cfg["val_fraction"],
                         cfg["split_seed"])
    folder = tmp_path / "site"
    folder.mkdir()
    for r in val.records[:150]:  # another site's windowing: lower contrast, a little brighter
        g = read_image(r.path).astype(np.float64)
        make_png(folder / (Path(r.path).stem + ".png"), np.clip((g - 128) * 0.75 + 140, 0, 255).astype(np.uint8))
    result = adapt(PACKAGED_MODEL, sorted(folder.iterdir()), tmp_path / "site.safetensors", batch_size=32)
    a = result.adaptation
    assert a["n_images"] >= MIN_SITE_IMAGES and a["n_in_validation_set"] == 0
    assert a["reference"]["drift_available"] is False  # fewer than 200 in scope
    new = load_checkpoint(result.out).state_dict
    changed = [k for k in new if not torch.equal(new[k], shipped.state_dict[k])]
    assert changed and all(k.endswith(BN_STATS) for k in changed)
    assert 0.0 < a["prevalence_em"] < 1.0
    p = Predictor.from_checkpoint(result.out)
    assert p.reference.info["kind"] == "site" and len(p.predict(sorted(folder.iterdir())[:4])) == 4


def test_site_squares_are_the_predictors_and_hashes_are_of_the_full_film(tmp_path):
    from imagefactory import jpeg_bytes

    from pneumoscan.io import read_image
    from pneumoscan.inference.files import decode_item
    from pneumoscan.preprocessing import Preprocessing
    from pneumoscan.onboarding.site import _read_films
    from pneumoscan.onboarding.trainset import pixel_hash

    spec = Preprocessing(image_size=64)
    paths = []
    for i, (h, w) in enumerate([(700, 540), (200, 180)]):  # the first decodes at reduced scale, the second not
        path = tmp_path / f"{i}.jpeg"
        path.write_bytes(jpeg_bytes(synthetic_xray(h, w, seed=i)))
        paths.append(str(path))
    for path, (digest, film) in zip(paths, _read_films(paths, spec, workers=1)):
        assert digest == pixel_hash(read_image(path))
        assert np.array_equal(film.square, decode_item(path, spec, raise_errors=True).square)
        assert film.gray is None  # only the square is kept
    assert not np.array_equal(resize_for_model(read_image(paths[0]), spec), _read_films(paths, spec, 1)[0][1].square)
