"""The drift check: its false-alarm rate on in-distribution batches (at any mix of cases), its power on shifted ones,
its refusals, and the fallback for a reference without labels."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pneumoscan.gate.drift import MIN_IMAGES, DriftCheck, NotEnoughImagesError
from pneumoscan.gate.reference import Reference, l2_normalize


def _world(seed: int = 0, c: int = 24, n: int = 3000):
    """A population of (feature, descriptor) pairs; the reference draws from it, so do in-distribution batches."""
    rng = np.random.default_rng(seed)
    center = rng.normal(size=c)
    feats = l2_normalize(center + 0.5 * rng.normal(size=(n, c)))
    desc = (0.5 + 0.1 * rng.normal(size=(n, 7))).astype(np.float32)
    return feats, desc


def _reference(feats, desc, n_bank=800, n_val=400):
    return Reference(bank=feats[:n_bank], val_features=feats[n_bank:n_bank + n_val], bank_descriptors=desc[:n_bank],
                     val_descriptors=desc[n_bank:n_bank + n_val], knn_k=5, knn_cut=1.0)


@pytest.fixture(scope="module")
def world():
    feats, desc = _world()
    return feats, desc, DriftCheck(_reference(feats, desc), n_resamples=100)


def test_in_distribution_batches_are_rarely_flagged(world):
    feats, desc, check = world
    rng = np.random.default_rng(1)
    pool = np.arange(1200, len(feats))  # never in the reference
    flagged = [check.test(feats[rows], desc[rows]).shifted
               for rows in (rng.choice(pool, 80, replace=False) for _ in range(40))]
    assert np.mean(flagged) <= 0.15  # nominal 5%; 40 trials


@pytest.mark.parametrize("shift", ["features", "intensity"])
def test_shifted_batches_are_flagged(world, shift):
    feats, desc, check = world
    rows = np.arange(1200, 1280)
    f, d = feats[rows].copy(), desc[rows].copy()
    if shift == "features":
        f = l2_normalize(f + 0.6 * np.random.default_rng(2).normal(size=f.shape))
    else:
        d = d + 0.15  # every image brighter
    result = check.test(f, d)
    assert result.shifted and result.statistic > result.threshold and result.n_images == 80
    component = result.features_component if shift == "features" else result.intensity_component
    assert component == pytest.approx(result.statistic)
    assert set(result.to_dict()) >= {"shifted", "statistic", "threshold", "n_images"}


def test_too_few_images_are_refused_and_big_batches_subsampled(world):
    feats, desc, check = world
    with pytest.raises(NotEnoughImagesError, match=f"at least {MIN_IMAGES}"):
        check.test(feats[:MIN_IMAGES - 1], desc[:MIN_IMAGES - 1])
    big = check.test(feats[1200:2400], desc[1200:2400])
    assert big.n_images == 1200 and big.n_used == check.max_batch == 400  # the validation films


def test_a_reference_too_small_to_resample_is_refused():
    feats, desc = _world()
    with pytest.raises(ValueError, match="at least 100"):
        DriftCheck(_reference(feats, desc, n_val=60))


def test_a_case_mix_far_from_the_training_mix_gets_a_caution(world):
    feats, desc, _ = world
    check = DriftCheck(_reference(feats, desc), n_resamples=50, prevalence=0.74)
    rows = np.arange(1200, 1260)
    far = check.test(feats[rows], desc[rows], flag_rate=1.0)
    assert far.reference_prevalence == 0.74 and "mix of cases" in far.case_mix_note
    assert far.to_dict()["case_mix_note"] == far.case_mix_note
    assert check.test(feats[rows], desc[rows], flag_rate=0.7).case_mix_note == ""
    assert "mix of cases" in check.test(feats[rows], desc[rows], flag_rate=0.3).case_mix_note
    assert check.test(feats[rows], desc[rows]).case_mix_note == ""  # no flag rate given: nothing to compare


# --- the mix of cases (issue 26): two classes whose features and intensities differ --------------------------------

def _two_class_world(seed: int = 0, c: int = 24, n: int = 4000):
    """Two classes (1 = "pneumonia"), each with its own feature centre and intensity level, labels alternating
    at random; the reference draws from it at about 75% class 1 and so do the pools below."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.75).astype(np.int8)
    centers = rng.normal(size=(2, c))
    feats = l2_normalize(centers[y] + 0.6 * rng.normal(size=(n, c)))
    desc = (0.45 + 0.1 * y[:, None] + 0.08 * rng.normal(size=(n, 7))).astype(np.float32)
    return feats, desc, y


@pytest.fixture(scope="module")
def two_class():
    feats, desc, y = _two_class_world()
    ref = _reference(feats, desc)
    ref.bank_labels, ref.val_labels = y[:800], y[800:1200]
    return feats, desc, y, DriftCheck(ref, n_resamples=100)


def _at_mix(rng, y, mix, n=80, start=1200):
    pos, neg = np.flatnonzero(y[start:] == 1) + start, np.flatnonzero(y[start:] == 0) + start
    k = int(round(n * mix))
    return np.concatenate([rng.choice(pos, k, replace=False), rng.choice(neg, n - k, replace=False)])


@pytest.mark.parametrize("mix", [0.1, 0.9])
def test_a_change_of_case_mix_alone_is_not_a_shift(two_class, mix):
    feats, desc, y, check = two_class
    rng = np.random.default_rng(3)
    results = [check.test(feats[rows], desc[rows]) for rows in (_at_mix(rng, y, mix) for _ in range(40))]
    assert np.mean([r.shifted for r in results]) <= 0.15  # nominal 5%; 40 trials
    assert abs(np.median([r.estimated_mix for r in results]) - mix) < 0.1
    assert all(r.case_mix_note == "" and "mix of cases" in r.method for r in results)
    # The same batches against the reference without its labels (the test before issue 26): nearly all "shifted".
    old = DriftCheck(dataclasses.replace(check.reference, bank_labels=None, val_labels=None), n_resamples=100)
    rng = np.random.default_rng(3)
    assert np.mean([old.test(feats[rows], desc[rows]).shifted for rows in (_at_mix(rng, y, mix) for _ in range(10))]) >= 0.8


@pytest.mark.parametrize("mix", [0.1, 0.9])
@pytest.mark.parametrize("shift", ["features", "intensity"])
def test_a_change_of_acquisition_is_still_a_shift_at_any_mix(two_class, mix, shift):
    feats, desc, y, check = two_class
    rows = _at_mix(np.random.default_rng(4), y, mix)
    f, d = feats[rows].copy(), desc[rows].copy()
    if shift == "features":
        f = l2_normalize(f + 0.6 * np.random.default_rng(2).normal(size=f.shape))
    else:
        d = d + 0.15
    result = check.test(f, d)
    assert result.shifted and result.estimated_mix is not None


def test_a_reference_without_labels_falls_back_and_says_so(world):
    feats, desc, check = world
    assert not check.mix_adjusted
    result = check.test(feats[1200:1280], desc[1200:1280], flag_rate=0.1)
    assert result.estimated_mix is None and "NOT adjusted for the mix of cases" in result.method
    assert "carries no labels" in DriftCheck(check.reference, n_resamples=50, prevalence=0.77).test(
        feats[1200:1280], desc[1200:1280], flag_rate=0.1).case_mix_note
    assert result.to_dict()["estimated_mix"] is None


def test_the_labels_travel_in_the_metadata_and_bad_ones_are_refused(two_class):
    ref = two_class[3].reference
    meta = ref.to_meta()
    assert meta["bank_labels"] == "".join(map(str, ref.bank_labels)) and len(meta["val_labels"]) == 400
    back = Reference.from_checkpoint_parts({f"reference.{k}": getattr(ref, k) for k in
                                            ("bank", "val_features", "bank_descriptors", "val_descriptors")}, meta)
    np.testing.assert_array_equal(back.bank_labels, ref.bank_labels)
    np.testing.assert_array_equal(back.val_labels, ref.val_labels)
    assert "bank_labels" not in back.info and back.to_meta() == meta
    old = {k: v for k, v in meta.items() if not k.endswith("_labels")}
    tensors = {f"reference.{k}": getattr(ref, k) for k in ("bank", "val_features", "bank_descriptors",
                                                            "val_descriptors")}
    assert Reference.from_checkpoint_parts(tensors, old).bank_labels is None  # an older model: no labels
    with pytest.raises(ValueError, match="bank_labels must be a string of 800"):
        Reference.from_checkpoint_parts(tensors, {**meta, "bank_labels": meta["bank_labels"][:-1]})
    with pytest.raises(ValueError, match="val_labels"):
        Reference.from_checkpoint_parts(tensors, {**meta, "val_labels": "2" * 400})


def test_a_pooled_batch_gets_the_same_verdict_and_a_given_mix_is_used(two_class):
    feats, desc, y, check = two_class
    pool = check.pool(feats[1200:2000], desc[1200:2000])
    rows = _at_mix(np.random.default_rng(5), y[1200:2000], 0.3, start=0)
    direct, pooled = check.test(feats[1200:2000][rows], desc[1200:2000][rows]), pool(rows)
    assert pooled.statistic == pytest.approx(direct.statistic, rel=1e-9)
    assert pooled.estimated_mix == pytest.approx(direct.estimated_mix) and pooled.threshold == direct.threshold
    given = check.test(feats[1200:2000][rows], desc[1200:2000][rows], mix=0.3)
    assert given.estimated_mix == 0.3 and "given by the caller" in given.method
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        check.test(feats[1200:1280], desc[1200:1280], mix=1.5)
    # The null is a table by batch size and grid mix (what a reference can carry precomputed).
    assert (80, check.grid_mix(direct.estimated_mix), True) in check._null


@pytest.mark.shared_data
@pytest.mark.slow
@pytest.mark.parametrize("mix", [0.2, 0.5])
def test_the_shipped_model_does_not_call_validation_films_at_another_mix_shifted(mix, shared_data_root):
    from pneumoscan.data import index_dataset, split_index
    from pneumoscan.inference.predictor import PACKAGED_MODEL, Predictor

    shipped = Predictor.from_checkpoint(PACKAGED_MODEL)
    assert shipped.drift.mix_adjusted, "the shipped reference lost its labels (scripts/build_reference.py --labels-only)"
    cfg = shipped.info.config["data"]
    _, val = split_index(index_dataset(shared_data_root, split=cfg["split"], check=False), cfg["val_fraction"],
                         cfg["split_seed"])
    y = np.array([r.label for r in val.records])
    rng = np.random.default_rng(7)
    k = int(round(100 * mix))
    rows = np.concatenate([rng.choice(np.flatnonzero(y == 1), k, replace=False),
                           rng.choice(np.flatnonzero(y == 0), 100 - k, replace=False)])
    result = shipped.check_drift(shipped.score_files([val.records[i].path for i in rows], batch_size=50))
    assert not result.shifted, result
    assert abs(result.estimated_mix - mix) < 0.1 and result.case_mix_note == ""
