"""The simulated site used by benchmarks/site_onboarding.py: honest splits and a real shift."""

from __future__ import annotations

import numpy as np
import pytest

from imagefactory import synthetic_xray
from sitefactory import _patient_number, build_site, labelled_subset, site_film


def test_site_film_changes_the_film_but_keeps_its_size():
    g = synthetic_xray(224, 224)
    s = site_film(g, seed=1)
    assert s.shape == g.shape and s.dtype == np.uint8 and not np.array_equal(s, g)
    assert np.array_equal(site_film(g, seed=1), s)  # seeded
    assert s.std() < g.std() * 1.05  # flatter contrast, despite the added noise


@pytest.mark.shared_data
def test_site_holds_out_the_lowest_numbered_patients(shared_data_root, tmp_path):
    site = build_site(shared_data_root, tmp_path / "site")
    assert len(site.pool) + len(site.test) == 575  # the model's validation split, never trained on
    pool_patients, test_patients = {r.patient_id for r in site.pool}, {r.patient_id for r in site.test}
    assert not pool_patients & test_patients
    for label in (0, 1):
        test_max = max(_patient_number(r.patient_id) for r in site.test if r.label == label)
        pool_min = min(_patient_number(r.patient_id) for r in site.pool if r.label == label)
        assert test_max <= pool_min
    subset = labelled_subset(site.pool, 50, seed=0)
    assert len(subset) == 50 and sum(r.label == 0 for r in subset) >= 15 and sum(r.label for r in subset) >= 15
