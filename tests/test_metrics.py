"""Metrics: agreement with scikit-learn and hand-computed cases, threshold selection, patient bootstrap,
DeLong's test and temperature scaling."""

import math
import time

import numpy as np
import pytest
from scipy.stats import norm
from sklearn import metrics as skm

from pneumoscan import metrics as M


def random_case(seed, n=200, decimals=2):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.6).astype(int)
    s = np.round(np.clip(0.25 * y + 0.75 * rng.random(n), 0, 1), decimals)  # rounding makes ties
    return y, s


# --- agreement with scikit-learn -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_ranking_metrics_match_sklearn(seed):
    y, s = random_case(seed, n=50 + 40 * seed, decimals=1 + seed % 3)
    assert M.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert M.pr_auc(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    assert M.brier(y, s) == pytest.approx(skm.brier_score_loss(y, s), abs=1e-12)
    fpr, tpr, thr = M.roc_points(y, s)
    fpr2, tpr2, _ = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, fpr2)
    np.testing.assert_allclose(tpr, tpr2)
    recall, precision, _ = M.pr_points(y, s)
    p2, r2, _ = skm.precision_recall_curve(y, s)
    np.testing.assert_allclose(recall, r2[:-1][::-1])
    np.testing.assert_allclose(precision, p2[:-1][::-1])


@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.73])
def test_confusion_metrics_match_sklearn(threshold):
    y, s = random_case(7)
    pred = (s >= threshold).astype(int)
    tn, fp, fn, tp = skm.confusion_matrix(y, pred).ravel()
    tm = M.threshold_metrics(y, s, threshold)
    assert (tm["tp"], tm["fp"], tm["tn"], tm["fn"]) == (tp, fp, tn, fn)
    assert tm["sensitivity"] == pytest.approx(skm.recall_score(y, pred))
    assert tm["specificity"] == pytest.approx(skm.recall_score(1 - y, 1 - pred))
    assert tm["ppv"] == pytest.approx(skm.precision_score(y, pred))
    assert tm["npv"] == pytest.approx(skm.precision_score(1 - y, 1 - pred))
    assert tm["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert tm["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert tm["f1"] == pytest.approx(skm.f1_score(y, pred))


def test_weighted_auc_and_ap_match_sklearn_sample_weight():
    # The bootstrap computes every resample as integer image weights; check those against sklearn.
    y, s = random_case(3, n=120)
    w = np.random.default_rng(0).integers(0, 4, y.size).astype(float)
    from pneumoscan.metrics.point import _ap_from_levels, _auc_from_levels, _level_weights, _levels

    lv = _levels(y, s)
    pos, neg = _level_weights(lv, w[None, :])
    assert _auc_from_levels(pos, neg)[0] == pytest.approx(skm.roc_auc_score(y, s, sample_weight=w), abs=1e-12)
    assert _ap_from_levels(pos, neg)[0] == pytest.approx(skm.average_precision_score(y, s, sample_weight=w), abs=1e-12)


def test_hand_computed_small_case():
    y = np.array([0, 0, 1, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8])
    assert M.roc_auc(y, s) == pytest.approx(0.75)  # 3 of the 4 positive/negative pairs are ordered
    assert M.pr_auc(y, s) == pytest.approx(0.5 * 1.0 + 0.5 * (2 / 3))
    assert M.brier(y, s) == pytest.approx((0.01 + 0.16 + 0.4225 + 0.04) / 4)
    tm = M.threshold_metrics(y, s, 0.4)
    assert (tm["tp"], tm["fp"], tm["tn"], tm["fn"]) == (1, 1, 1, 1)
    assert tm["sensitivity"] == tm["specificity"] == tm["ppv"] == tm["npv"] == tm["f1"] == 0.5
    assert M.roc_auc([0, 1, 1], [0.5, 0.5, 0.9]) == pytest.approx(0.75)  # a tie counts one half


def test_undefined_metrics_are_nan():
    assert math.isnan(M.roc_auc([1, 1], [0.2, 0.9]))
    assert math.isnan(M.pr_auc([0, 0], [0.2, 0.9]))
    assert math.isnan(M.sensitivity([0, 0], [0.2, 0.9]))
    assert math.isnan(M.ppv([0, 1], [0.1, 0.2], 0.5))


def test_ece_and_reliability_curve():
    y = np.array([0, 1, 1, 1])
    s = np.array([0.05, 0.05, 0.95, 0.95])  # bin 0: mean 0.05, 1/2 positive; bin 9: mean 0.95, all positive
    r = M.reliability_curve(y, s, 10)
    assert r["count"][0] == 2 and r["count"][9] == 2 and r["count"].sum() == 4
    assert M.ece(y, s) == pytest.approx((2 * 0.45 + 2 * 0.05) / 4)


# --- threshold selection -------------------------------------------------------------------------------


def brute_force_highest(y, s, target):
    candidates = np.unique(np.r_[s, s + 1e-9])
    ok = [t for t in candidates if M.sensitivity(y, s, t) >= target]
    return max(ok)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("target", [0.5, 0.9, 0.95, 1.0])
def test_threshold_for_sensitivity_is_the_highest_reaching_target(seed, target):
    y, s = random_case(seed, n=80, decimals=2)
    t = M.threshold_for_sensitivity(y, s, target)
    assert M.sensitivity(y, s, t) >= target
    assert t == pytest.approx(brute_force_highest(y, s, target))


def test_threshold_for_sensitivity_edge_cases():
    # Ties: three positives tie at 0.8; the highest threshold reaching 50% sensitivity is 0.8 (and gives 75%).
    y = np.array([1, 1, 1, 1, 0])
    s = np.array([0.9, 0.8, 0.8, 0.3, 0.5])
    assert M.threshold_for_sensitivity(y, s, 0.5) == 0.8
    assert M.sensitivity(y, s, 0.8) == 0.75
    # Target 1.0: the lowest positive score; every positive flagged.
    assert M.threshold_for_sensitivity(y, s, 1.0) == 0.3
    # All positive.
    assert M.threshold_for_sensitivity([1, 1, 1], [0.2, 0.6, 0.4], 0.6) == 0.4
    # 0.95 * 20 must not round up to 20 positives.
    y20, s20 = np.ones(20, int), np.linspace(0.05, 1.0, 20)
    assert M.threshold_for_sensitivity(y20, s20, 0.95) == pytest.approx(s20[1])
    with pytest.raises(ValueError, match="no positive"):
        M.threshold_for_sensitivity([0, 0], [0.1, 0.2], 0.9)
    with pytest.raises(ValueError):
        M.threshold_for_sensitivity(y, s, 0.0)


def test_youden_threshold_brute_force_and_ties():
    y, s = random_case(11, n=150)
    t = M.youden_threshold(y, s)
    j = lambda th: M.sensitivity(y, s, th) + M.specificity(y, s, th) - 1  # noqa: E731
    assert j(t) == pytest.approx(max(j(c) for c in np.unique(s)))
    # Two thresholds with the same J: the lower one (higher sensitivity) wins.
    y2, s2 = np.array([0, 1, 0, 1]), np.array([0.1, 0.2, 0.3, 0.4])
    assert M.youden_threshold(y2, s2) == 0.2
    with pytest.raises(ValueError):
        M.youden_threshold([1, 1], [0.1, 0.2])


# --- bootstrap -------------------------------------------------------------------------------------------


def test_bootstrap_contains_point_and_is_reproducible():
    y, s = random_case(5, n=300)
    groups = [f"p{i // 3}" for i in range(y.size)]
    ths = {"op": 0.4, "half": 0.5}
    a = M.bootstrap_ci(y, s, ths, groups=groups, n_resamples=500, seed=1)
    b = M.bootstrap_ci(y, s, ths, groups=groups, n_resamples=500, seed=1)
    c = M.bootstrap_ci(y, s, ths, groups=groups, n_resamples=500, seed=2)
    assert a == b
    assert a["roc_auc"] != c["roc_auc"]
    assert a["roc_auc"][0] <= M.roc_auc(y, s) <= a["roc_auc"][1]
    assert a["pr_auc"][0] <= M.pr_auc(y, s) <= a["pr_auc"][1]
    for name, t in ths.items():
        tm = M.threshold_metrics(y, s, t)
        for m in M.THRESHOLD_METRICS:
            lo, hi = a["thresholds"][name][m]
            assert lo <= tm[m] <= hi, (name, m)
    assert a["n_groups"] == 100 and a["n_resamples"] == 500


def test_patient_bootstrap_groups_duplicated_images():
    # Every patient's image appears 4 times. Resampling patients must give the interval of the
    # original images; resampling images as if independent would shrink it about twofold.
    y, s = random_case(9, n=120)
    ids = np.array([f"p{i:03d}" for i in range(y.size)])
    y4, s4, ids4 = np.repeat(y, 4), np.repeat(s, 4), np.repeat(ids, 4)
    width = lambda ci: ci["roc_auc"][1] - ci["roc_auc"][0]  # noqa: E731
    original = M.bootstrap_ci(y, s, groups=ids, n_resamples=1000, seed=0)
    clustered = M.bootstrap_ci(y4, s4, groups=ids4, n_resamples=1000, seed=0)
    iid = M.bootstrap_ci(y4, s4, groups=None, n_resamples=1000, seed=0)
    assert width(clustered) == pytest.approx(width(original), rel=1e-9)
    assert width(iid) < 0.7 * width(clustered)


def test_bootstrap_is_fast():
    rng = np.random.default_rng(0)
    n = 624
    y = (rng.random(n) < 0.62).astype(int)
    s = np.clip(0.3 * y + 0.7 * rng.random(n), 0, 1)
    groups = [f"p{i // 2}" for i in range(n)]
    t0 = time.perf_counter()
    M.bootstrap_ci(y, s, {"operating": 0.3, "fixed_0.5": 0.5, "youden": 0.6}, groups=groups, n_resamples=2000)
    assert time.perf_counter() - t0 < 5.0


def test_paired_bootstrap_difference():
    y, s = random_case(2, n=200)
    same = M.bootstrap_auc_difference(y, s, s.copy(), n_resamples=200)
    assert same["diff"] == 0 and same["ci"] == [0.0, 0.0]
    noisy = s + np.random.default_rng(0).normal(0, 0.3, s.size)
    d = M.bootstrap_auc_difference(y, s, noisy, groups=[str(i // 2) for i in range(y.size)], n_resamples=500)
    assert d["diff"] == pytest.approx(M.roc_auc(y, s) - M.roc_auc(y, noisy))
    assert d["ci"][0] <= d["diff"] <= d["ci"][1]


# --- DeLong ----------------------------------------------------------------------------------------------


def slow_delong(y, s1, s2):
    """O(n^2) reference straight from DeLong et al. (1988): structural components from the psi kernel."""
    def comps(s):
        x, z = s[y == 1], s[y == 0]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        return psi.mean(axis=1), psi.mean(axis=0), psi.mean()
    v10a, v01a, a1 = comps(s1)
    v10b, v01b, a2 = comps(s2)
    m, n = len(v10a), len(v01a)
    s10, s01 = np.cov(np.vstack([v10a, v10b])), np.cov(np.vstack([v01a, v01b]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / m + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / n
    z = (a1 - a2) / math.sqrt(var)
    return a1, a2, var, 2 * norm.sf(abs(z))


def test_delong_matches_slow_reference_with_ties():
    y, s1 = random_case(4, n=90, decimals=1)
    s2 = np.round(np.clip(s1 + np.random.default_rng(1).normal(0, 0.2, s1.size), 0, 1), 1)
    a1, a2, var, p = slow_delong(y, s1, s2)
    r = M.delong_test(y, s1, s2)
    assert r["auc_1"] == pytest.approx(a1) and r["auc_2"] == pytest.approx(a2)
    assert r["auc_1"] == pytest.approx(M.roc_auc(y, s1))
    assert r["se"] ** 2 == pytest.approx(var, rel=1e-9)
    assert r["p_value"] == pytest.approx(p, rel=1e-9)


def test_delong_known_values():
    # Positives 0.9, 0.6; negatives 0.7, 0.2: AUC 0.75, components [1, 0.5] and [0.5, 1].
    # Against a constant score (AUC 0.5, components all 0.5) the difference has
    # variance var([1, .5]) / 2 + var([.5, 1]) / 2 = 0.125.
    y = np.array([1, 1, 0, 0])
    s = np.array([0.9, 0.6, 0.7, 0.2])
    r = M.delong_test(y, s, np.full(4, 0.5))
    assert r["diff"] == pytest.approx(0.25)
    assert r["se"] == pytest.approx(math.sqrt(0.125))
    assert r["p_value"] == pytest.approx(2 * norm.sf(0.25 / math.sqrt(0.125)))
    y0, s0 = random_case(0)
    identical = M.delong_test(y0, s0, s0.copy())
    assert identical["p_value"] == 1.0 and identical["z"] == 0.0
    with pytest.raises(ValueError):
        M.delong_test([1, 0, 0], [0.5, 0.2, 0.1], [0.4, 0.3, 0.2])


# --- temperature scaling ----------------------------------------------------------------------------------


def test_temperature_scaling_fixes_overconfident_logits():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, 2000)
    y = (rng.random(2000) < 1 / (1 + np.exp(-true_logits))).astype(int)
    overconfident = 4.0 * true_logits
    t = M.fit_temperature(overconfident, y)
    assert 3.0 < t < 5.0
    assert M.binary_nll(y, overconfident, t) < M.binary_nll(y, overconfident) - 0.1
    assert M.ece(y, M.apply_temperature(overconfident, t)) < M.ece(y, M.apply_temperature(overconfident))
    # T only rescales: the ranking, hence the AUC, is unchanged.
    assert M.roc_auc(y, M.apply_temperature(overconfident, t)) == pytest.approx(M.roc_auc(y, overconfident))


def test_temperature_degenerate_cases():
    assert M.fit_temperature(np.array([1.0, 2.0]), np.array([1, 1])) == 1.0  # one class
    assert M.fit_temperature(np.array([-3.0, -1.0, 2.0]), np.array([0, 0, 1])) == 1.0  # separated: no minimum
    t = M.fit_temperature(np.array([100.0, -100.0, 50.0, -50.0]), np.array([0, 1, 1, 0]))
    assert 0.05 <= t <= 20.0 and math.isfinite(t)


def brute_force_min_cost(y, s, miss_cost, min_sens):
    best = None
    for t in sorted(np.unique(s), reverse=True):
        c = M.confusion(y, s, t)
        if c.tp < np.ceil(min_sens * y.sum() - 1e-9):
            continue
        cost = miss_cost * c.fn + c.fp
        if best is None or cost < best[0]:
            best = (cost, t)
    return best[1]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("miss_cost", [0.0, 1.0, 3.0, 50.0])
@pytest.mark.parametrize("min_sens", [0.0, 0.9, 1.0])
def test_threshold_min_cost_matches_brute_force(seed, miss_cost, min_sens):
    y, s = random_case(seed, n=80, decimals=2)
    t = M.threshold_min_cost(y, s, miss_cost=miss_cost, min_sensitivity=min_sens)
    assert M.sensitivity(y, s, t) >= min_sens
    assert t == pytest.approx(brute_force_min_cost(y, s, miss_cost, min_sens))


def test_threshold_min_cost_puts_sensitivity_first():
    # Positives 0.95, 0.90, ..., 0.55 (9) and one at 0.2; negatives at 0.6 and below. The highest threshold
    # reaching 80 % sensitivity is 0.6 (2 misses, 1 false alarm); when a miss costs 3 false alarms, 0.55 is
    # cheaper (1 miss, 1 false alarm: cost 4 < 7), and 0.2 is not (0 misses, 6 false alarms).
    y = np.array([1] * 10 + [0] * 10)
    s = np.r_[np.linspace(0.95, 0.55, 9), 0.2, [0.6, 0.5, 0.4, 0.35, 0.3, 0.25, 0.15, 0.1, 0.05, 0.01]]
    # miss_cost 0 is the old rule: the highest threshold reaching the target.
    assert M.threshold_min_cost(y, s, miss_cost=0, min_sensitivity=0.8) == M.threshold_for_sensitivity(y, s, 0.8)
    t3 = M.threshold_min_cost(y, s, miss_cost=3, min_sensitivity=0.8)
    assert M.sensitivity(y, s, t3) > M.sensitivity(y, s, M.threshold_for_sensitivity(y, s, 0.8))
    assert t3 == pytest.approx(0.55)  # all 9 clear positives caught, one false alarm (0.6)
    # A very costly miss flags everything down to the last positive.
    assert M.threshold_min_cost(y, s, miss_cost=100, min_sensitivity=0.8) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="miss_cost"):
        M.threshold_min_cost(y, s, miss_cost=-1)
    with pytest.raises(ValueError, match="no positive"):
        M.threshold_min_cost([0, 0], [0.1, 0.2])


# --- exact intervals for proportions ------------------------------------------------------------------------


def test_exact_proportion_ci_known_values():
    from pneumoscan.metrics.uncertainty import exact_proportion_ci

    # Clopper-Pearson, textbook closed forms at the ends: k = n gives [(alpha/2)^(1/n), 1], k = 0 its mirror.
    assert exact_proportion_ci(10, 10) == pytest.approx([0.025 ** (1 / 10), 1.0])
    assert exact_proportion_ci(0, 20) == pytest.approx([0.0, 1 - 0.025 ** (1 / 20)])
    # Newcombe (Stat Med 17:857, 1998), example 0 of 20: Clopper-Pearson 0 to 0.1684, Wilson 0 to 0.1611.
    assert exact_proportion_ci(0, 20) == pytest.approx([0.0, 0.1684], abs=1e-4)
    assert exact_proportion_ci(0, 20, method="wilson") == pytest.approx([0.0, 0.1611], abs=1e-4)
    # 7 of 20: the beta-quantile definition of Clopper-Pearson.
    from scipy.stats import beta
    lo, hi = exact_proportion_ci(7, 20)
    assert (lo, hi) == pytest.approx((0.1539, 0.5922), abs=1e-4)
    assert (lo, hi) == pytest.approx((beta.ppf(0.025, 7, 14), beta.ppf(0.975, 8, 13)), abs=1e-9)
    # The level changes the width; no trial, no interval; impossible counts are refused.
    assert exact_proportion_ci(10, 10, level=0.9)[0] == pytest.approx(0.05 ** (1 / 10))
    assert all(math.isnan(v) for v in exact_proportion_ci(0, 0))
    with pytest.raises(ValueError):
        exact_proportion_ci(3, 2)


def test_degenerate_bootstrap_interval_becomes_exact():
    from pneumoscan.metrics.uncertainty import CI_BOOTSTRAP, CI_EXACT, CI_NO_SPREAD

    # Separable scores, two films per patient: every resample is all correct, so the bootstrap gives 100% to 100%.
    y = np.r_[np.ones(12, int), np.zeros(8, int)]
    s = np.r_[np.full(12, 0.9), np.full(8, 0.2)]
    groups = [f"p{i // 2}" for i in range(20)]
    out = M.summarize_scores(y, s, {"operating": 0.5}, groups=groups, n_resamples=200)
    m = out["thresholds"]["operating"]["metrics"]
    for metric, n in (("sensitivity", 12), ("specificity", 8), ("ppv", 12), ("npv", 8), ("accuracy", 20)):
        assert m[metric]["value"] == 1.0 and m[metric]["ci_method"] == CI_EXACT, metric
        assert m[metric]["ci"] == pytest.approx([0.025 ** (1 / n), 1.0]), metric
    # Not proportions: the zero-width bootstrap interval stays, marked as having no spread.
    for metric in ("balanced_accuracy", "f1"):
        assert m[metric]["ci"] == [1.0, 1.0] and m[metric]["ci_method"] == CI_NO_SPREAD
    assert out["roc_auc"]["ci_method"] == CI_NO_SPREAD
    # A bootstrap interval with spread is kept as it is (it respects the patients).
    y2, s2 = random_case(3, n=120)
    out2 = M.summarize_scores(y2, s2, {"operating": 0.5}, groups=[f"p{i // 3}" for i in range(120)], n_resamples=200)
    boot = M.bootstrap_ci(y2, s2, {"operating": 0.5}, groups=[f"p{i // 3}" for i in range(120)], n_resamples=200)
    sens = out2["thresholds"]["operating"]["metrics"]["sensitivity"]
    assert sens["ci_method"] == CI_BOOTSTRAP and sens["ci"] == boot["thresholds"]["operating"]["sensitivity"]
    # Subgroups follow the same rule.
    out3 = M.summarize_scores(y, s, {"operating": 0.5}, groups=groups, causes=["virus"] * 12 + [None] * 8,
                              n_resamples=100)
    sub = out3["subgroups"]["cause"]["virus"]["sensitivity"]["operating"]
    assert sub["ci_method"] == CI_EXACT and sub["ci"] == pytest.approx([0.025 ** (1 / 12), 1.0])
