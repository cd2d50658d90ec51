"""The out-of-scope gate: DICOM metadata, pixel statistics and the model's features; the reference it uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imagefactory import synthetic_xray
from oodfactory import generated
from pneumoscan.checkpoint import load_checkpoint, save_checkpoint
from pneumoscan.io import ImageContext
from pneumoscan.gate.reference import Reference, knn_distance, l2_normalize, reference_of
from pneumoscan.gate.scope import OUT_OF_SCOPE, ScopeGate, metadata_reason, pixel_reason, pixel_stats


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
    assert not outside.in_scope and outside.evidence == "features" and "like the training films" in outside.reason
    # Metadata is checked first, then pixels, then features.
    assert gate.assess(_dicom(modality="CT"), np.zeros((160, 160), np.uint8), far).evidence == "metadata"
    assert gate.assess(None, np.zeros((160, 160), np.uint8), near).evidence == "pixels"
    assert ScopeGate(None).assess(None, film, far).in_scope  # no reference: no feature check


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
