"""The drift check: its false-alarm rate on in-distribution batches, its power on shifted ones, its refusals."""

from __future__ import annotations

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
