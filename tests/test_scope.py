"""The out-of-scope gate: DICOM metadata, pixel statistics and the model's features; the reference it uses."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from imagefactory import synthetic_xray
from oodfactory import generated
from pneumoscan.checkpoint import load_checkpoint, save_checkpoint
from pneumoscan.io import ImageContext
from pneumoscan.gate.reference import Reference, knn_distance, l2_normalize, reference_of
from pneumoscan.constants import UNFAMILIAR_CAUTION
from pneumoscan.gate.scope import (
    FEATURE_REASON,
    OUT_OF_SCOPE,
    ScopeGate,
    ScopeResult,
    metadata_reason,
    pixel_reason,
    pixel_stats,
)


def _dicom(**tags: str) -> ImageContext:
    return ImageContext(format="DICOM", **tags)


@pytest.mark.parametrize("ctx, fragment", [
    (_dicom(modality="CT"), "DICOM Modality CT"),
    (_dicom(modality="MR"), "not a chest radiograph"),
    (_dicom(modality="US"), "Modality US"),
    (_dicom(modality="DX", body_part="HAND"), "not the chest (DICOM BodyPartExamined HAND)"),
    (_dicom(modality="CR", view="LL"), "lateral view (DICOM ViewPosition LL)"),
    (_dicom(view="RAO"), "oblique view"),
    (_dicom(age="081Y"), "adult patient (DICOM PatientAge 081Y)"),
    (_dicom(age="018Y"), "adult patient"),
])
def test_metadata_refuses_what_the_header_rules_out(ctx, fragment):
    assert fragment in metadata_reason(ctx)


@pytest.mark.parametrize("ctx", [
    None, ImageContext(), ImageContext(format="PNG", modality="CT"),  # only DICOM headers count
    _dicom(), _dicom(modality="DX", body_part="CHEST", view="PA", age="004Y"),
    _dicom(modality="CR", body_part="Thorax", view="AP", age="017Y"),
    _dicom(age="030M"), _dicom(age="garbage"),  # an unreadable age is no reason to refuse
])
def test_metadata_passes_pediatric_frontal_chest_films_and_missing_tags(ctx):
    assert metadata_reason(ctx) == ""


def test_adult_cut_off_is_configurable():
    assert metadata_reason(_dicom(age="016Y"), adult_age_years=16) != ""
    assert metadata_reason(_dicom(age="016Y")) == ""
    assert ImageContext(age="006M").age_years() == pytest.approx(0.5)


@pytest.mark.parametrize("name, fragment", [
    ("black", "blank or uniform"), ("white", "blank or uniform"), ("gray", "blank or uniform"),
    ("gray_with_sensor_noise", "blank or uniform"), ("uniform_noise", "noise"), ("gaussian_noise", "noise"),
    ("horizontal_gradient", "too smooth"), ("radial_gradient", "too smooth"), ("typed_page", "text"),
    ("checkerboard", "fine detail"), ("typed_page_inverted", "not a radiograph"),
])
def test_pixel_rules_catch_blank_noise_gradients_and_text(name, fragment):
    from pneumoscan.preprocessing import Preprocessing, resize_for_model

    images = {n: img for _, n, img in generated(256)}
    square = resize_for_model(images[name], Preprocessing(image_size=160))
    assert fragment in pixel_reason(square)


def test_pixel_rules_pass_real_films(shared_data_root, fullres_samples):
    """No training film (a seeded sample of 400) and none of the 40 full-resolution films is refused by pixels."""
    from pneumoscan.data import index_dataset
    from pneumoscan.io import read_image
    from pneumoscan.preprocessing import Preprocessing, resize_for_model

    spec = Preprocessing(image_size=160)
    records = index_dataset(shared_data_root, split="train", check=False).records
    rng = np.random.default_rng(0)
    paths = [records[i].path for i in rng.choice(len(records), 400, replace=False)] + [str(p) for p in fullres_samples]
    refused = {p: pixel_reason(resize_for_model(read_image(p), spec)) for p in paths}
    assert not {p: r for p, r in refused.items() if r}
    stats = pixel_stats(resize_for_model(read_image(paths[0]), spec))
    assert stats.std > 8 and stats.neighbour_correlation > 0.8 and 1.2 < stats.laplacian < 25


def _random_reference(c: int = 32, n_bank: int = 300, n_val: int = 120, seed: int = 0) -> Reference:
    rng = np.random.default_rng(seed)
    center = rng.normal(size=c)
    bank = l2_normalize(center + 0.3 * rng.normal(size=(n_bank, c)))
    val = l2_normalize(center + 0.3 * rng.normal(size=(n_val, c)))
    scores = knn_distance(val, bank, 5)
    return Reference(bank=bank, val_features=val, bank_descriptors=rng.random((n_bank, 7), dtype=np.float32),
                     val_descriptors=rng.random((n_val, 7), dtype=np.float32), knn_k=5,
                     knn_cut=float(np.sort(scores)[int(0.99 * n_val)]), info={"n_val": n_val})


def test_feature_check_refuses_what_lies_far_from_the_training_films():
    ref = _random_reference()
    gate = ScopeGate(ref)
    film = synthetic_xray(160, 160)
    near = ref.val_features[0]
    far = l2_normalize(-ref.bank.mean(0, keepdims=True))[0]
    inside = gate.assess(None, film, near)
    assert inside.in_scope and inside.reason == "" and inside.ood_score is not None
    outside = gate.assess(None, film, far)
    assert not outside.in_scope and outside.evidence == "features" and outside.reason == FEATURE_REASON
    assert outside.caution == "" and outside.ood_score > ref.refuse_limit
    # Metadata is checked first, then pixels, then features.
    assert gate.assess(_dicom(modality="CT"), np.zeros((160, 160), np.uint8), far).evidence == "metadata"
    assert gate.assess(None, np.zeros((160, 160), np.uint8), near).evidence == "pixels"
    assert ScopeGate(None).assess(None, film, far).in_scope  # no reference: no feature check


def _at_distance(ref: Reference, target: float, seed: int = 1) -> np.ndarray:
    """A unit feature vector whose k-NN distance to ``ref``'s bank is ``target`` (within 1e-4): bisect on the mix of
    a bank film and a direction away from the bank."""
    rng = np.random.default_rng(seed)
    away = rng.normal(size=ref.bank.shape[1])
    lo, hi = 0.0, 50.0
    for _ in range(80):
        mid = (lo + hi) / 2
        f = l2_normalize((ref.bank.mean(0) + mid * away)[None])[0]
        lo, hi = (mid, hi) if ref.ood_scores(f[None])[0] < target else (lo, mid)
    f = l2_normalize((ref.bank.mean(0) + lo * away)[None])[0]
    assert abs(ref.ood_scores(f[None])[0] - target) < 1e-4
    return f


def test_two_verdicts_between_the_cuts_scored_with_a_caution_beyond_the_refuse_cut_refused():
    """Above knn_cut but not above refuse_cut: a chest film unlike the training films, in scope, with the caution;
    above refuse_cut: not recognised as a chest film, refused; metadata and pixel refusals come first, as before."""
    import dataclasses

    base = _random_reference()
    ref = dataclasses.replace(base, refuse_cut=base.knn_cut + 0.2)
    gate, film = ScopeGate(ref), synthetic_xray(160, 160)
    between = _at_distance(ref, ref.knn_cut + 0.1)
    beyond = _at_distance(ref, ref.knn_cut + 0.3)
    verdict = gate.assess(None, film, between)
    assert verdict == ScopeResult(True, "", pytest.approx(ref.knn_cut + 0.1, abs=1e-4), "", UNFAMILIAR_CAUTION)
    refused = gate.assess(None, film, beyond)
    assert (refused.in_scope, refused.reason, refused.evidence, refused.caution) == (False, FEATURE_REASON,
                                                                                     "features", "")
    assert gate.assess(None, film, ref.val_features[0]).caution == ""  # familiar: no caution
    # Metadata and pixels refuse whatever the features say, with their own reasons and no caution.
    for ctx, square, evidence in ((_dicom(modality="CT"), film, "metadata"), (_dicom(age="81"), film, "metadata"),
                                  (None, np.zeros((160, 160), np.uint8), "pixels")):
        v = gate.assess(ctx, square, between)
        assert (v.in_scope, v.evidence, v.caution) == (False, evidence, "") and v.reason
    with pytest.raises(ValueError, match="caution"):
        ScopeResult(False, "x", caution=UNFAMILIAR_CAUTION)



def test_the_predictor_scores_a_cautioned_film_and_refuses_one_beyond_the_refuse_cut(tmp_path):
    """End to end through :meth:`Predictor.predict`: with the film's own feature distance between the two cuts it is
    scored (decision, score, in scope) with the caution; with the refuse cut below it, it is not assessed."""
    import dataclasses

    from modelfactory import make_checkpoint
    from pneumoscan.inference.predictor import Predictor

    p = Predictor.from_checkpoint(make_checkpoint(tmp_path / "m.safetensors", threshold=0.0))  # everything flags
    film = synthetic_xray(200, 180)
    feats = p._forward([p.read(film).square]).feats[0]
    rng = np.random.default_rng(0)
    bank = l2_normalize(feats[None] + 0.5 * rng.normal(size=(64, feats.size)) * np.abs(feats).mean())
    score = float(knn_distance(feats[None], bank, 5)[0])
    ref = Reference(bank=bank, val_features=bank[:30], bank_descriptors=rng.random((64, 7), dtype=np.float32),
                    val_descriptors=rng.random((30, 7), dtype=np.float32), knn_k=5, knn_cut=score - 0.01,
                    refuse_cut=score + 0.01)
    p.gate = ScopeGate(ref)
    (cautioned,) = p.predict([film])
    assert cautioned.in_scope and cautioned.assessed and cautioned.decision == "PNEUMONIA" and cautioned.positive
    assert cautioned.scope_caution == UNFAMILIAR_CAUTION and cautioned.score is not None
    assert cautioned.ood_score == pytest.approx(score, abs=1e-5)
    assert cautioned.to_dict()["scope_caution"] == UNFAMILIAR_CAUTION
    p.gate = ScopeGate(dataclasses.replace(ref, refuse_cut=score - 0.005))
    (refused,) = p.predict([film])
    assert not refused.in_scope and refused.decision == OUT_OF_SCOPE and refused.scope_reason == FEATURE_REASON
    assert refused.scope_caution == "" and refused.score is None
    p.gate = ScopeGate(dataclasses.replace(ref, knn_cut=score + 0.005))
    assert p.predict([film])[0].scope_caution == ""  # familiar: scored without a caution

    # The drift check counts the cautioned film (in scope) and not the refused one.
    seen = []
    p._drift = SimpleNamespace(test=lambda feats, descs, **kw: seen.append((len(feats), kw.get("flag_rate"))))
    p.check_drift([cautioned, cautioned, refused])
    assert seen == [(2, 1.0)]


def test_refuse_cut_travels_in_the_metadata_and_a_reference_without_one_falls_back_to_its_validation_films():
    import dataclasses

    ref = _random_reference()
    assert ref.refuse_cut is None and "refuse_cut" not in ref.to_meta()
    own = knn_distance(ref.val_features, ref.bank, ref.knn_k)
    assert ref.refuse_limit == pytest.approx(max(own.max(), ref.knn_cut))  # the farthest held-out training film
    tensors = {k: v.numpy() for k, v in ref.to_tensors().items()}
    assert Reference.from_checkpoint_parts(tensors, ref.to_meta()).refuse_cut is None
    cut = dataclasses.replace(ref, refuse_cut=0.7)
    meta = cut.to_meta()
    assert meta["refuse_cut"] == 0.7
    back = Reference.from_checkpoint_parts(tensors, meta)
    assert back.refuse_cut == 0.7 and back.refuse_limit == 0.7 and "refuse_cut" not in back.info
    low = dataclasses.replace(ref, refuse_cut=ref.knn_cut / 2)  # never below the caution cut
    assert low.refuse_limit == ref.knn_cut


def test_reference_travels_in_the_checkpoint(tmp_path):
    from modelfactory import checkpoint_meta
    from pneumoscan.models import create_model
    from pneumoscan.inference.scoring import model_from_checkpoint

    ref = _random_reference()
    model = create_model("seed-cnn")
    path = save_checkpoint(tmp_path / "m.safetensors", model.state_dict(), {**checkpoint_meta(), "reference": ref.to_meta()},
                           extra=ref.to_tensors())
    ckpt = load_checkpoint(path)
    assert set(ckpt.extra) == {f"reference.{n}" for n in ("bank", "val_features", "bank_descriptors", "val_descriptors")}
    model_from_checkpoint(ckpt)  # the weights alone still load strictly
    back = reference_of(ckpt)
    assert back.knn_k == 5 and back.knn_cut == pytest.approx(ref.knn_cut) and back.info == {"n_val": 120}
    np.testing.assert_allclose(back.bank, ref.bank, atol=1e-3)  # stored as float16
    with pytest.raises(ValueError, match="prefix"):
        save_checkpoint(tmp_path / "x.safetensors", model.state_dict(), checkpoint_meta(), extra={"oops": torch.zeros(1)})


def test_predictor_gives_out_of_scope_never_a_risk(tmp_path):
    from modelfactory import make_checkpoint
    from pneumoscan.inference.predictor import Predictor

    p = Predictor.from_checkpoint(make_checkpoint(tmp_path / "m.safetensors", threshold=0.0))  # everything flags
    blank, film = np.full((200, 200), 128, np.uint8), synthetic_xray(200, 180)
    out_p, in_p = p.predict([blank, film])
    assert out_p.label == OUT_OF_SCOPE and not out_p.positive and out_p.scope_reason == "blank or uniform image"
    assert in_p.in_scope and in_p.label == "PNEUMONIA" and in_p.positive
