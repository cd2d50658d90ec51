"""Uncertainty: the patient (cluster) bootstrap, exact binomial intervals and DeLong's test.

When the bootstrap is used and when the exact interval replaces it: see :func:`proportion_ci`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from pneumoscan.metrics.point import (
    _FROM_CONFUSION,
    THRESHOLD_METRICS,
    Confusion,
    _ap_from_levels,
    _auc_from_levels,
    _check,
    _level_weights,
    _levels,
    _ratio,
    decide,
    roc_auc,
)

#: ``ci_method`` values: how an interval was made.
CI_BOOTSTRAP = "bootstrap"
CI_EXACT = "clopper-pearson"
CI_NO_SPREAD = "bootstrap-no-spread"

#: The metrics that are binomial proportions, as (successes, trials) of the confusion counts.
PROPORTION_COUNTS = {
    "sensitivity": lambda c: (c.tp, c.tp + c.fn),
    "specificity": lambda c: (c.tn, c.tn + c.fp),
    "ppv": lambda c: (c.tp, c.tp + c.fp),
    "npv": lambda c: (c.tn, c.tn + c.fn),
    "accuracy": lambda c: (c.tp + c.tn, c.tp + c.tn + c.fp + c.fn),
}


def exact_proportion_ci(k: int, n: int, level: float = 0.95, method: str = "exact") -> list[float]:
    """Interval for a proportion of ``k`` successes in ``n`` trials, from :func:`scipy.stats.binomtest`.

    ``method="exact"`` is Clopper-Pearson (inverting two one-sided binomial tests; never shorter than the
    nominal coverage requires), ``"wilson"`` the Wilson score interval. ``k == n`` gives an upper end of 1 and a
    lower end below 1 (Clopper-Pearson: ``((1 - level) / 2) ** (1 / n)``), where a bootstrap gives 100% to 100%.
    Returns ``[lo, hi]`` in [0, 1]; ``[nan, nan]`` when ``n`` is 0.
    """
    k, n = int(k), int(n)
    if n <= 0:
        return [math.nan, math.nan]
    if not 0 <= k <= n:
        raise ValueError(f"{k} successes out of {n} trials")
    from scipy.stats import (
        binomtest,  # scipy is imported when used: predict's start-up does not need it
    )

    ci = binomtest(k, n).proportion_ci(confidence_level=level, method=method)
    return [float(ci.low), float(ci.high)]


def is_degenerate(ci: Sequence[float], tol: float = 1e-12) -> bool:
    """True for a finite interval of zero width: every bootstrap resample gave the same value."""
    lo, hi = float(ci[0]), float(ci[1])
    return math.isfinite(lo) and math.isfinite(hi) and hi - lo <= tol


def proportion_ci(boot_ci: Sequence[float], k: int, n: int, level: float = 0.95) -> tuple[list[float], str]:
    """The interval the report gives a proportion (sensitivity, specificity, PPV, NPV, accuracy), and its method.

    The patient-level bootstrap interval is kept, because it counts several films of one child as one piece of
    evidence and a binomial interval on images cannot. Where it has zero width, every resample gave the same
    value (typically 100%: all correct, or 0%), which is no evidence of certainty; there the Clopper-Pearson
    interval of ``k`` of ``n`` images replaces it. Returns ``(ci, CI_BOOTSTRAP or CI_EXACT)``.
    """
    if is_degenerate(boot_ci) and n > 0:
        return exact_proportion_ci(k, n, level), CI_EXACT
    return [float(boot_ci[0]), float(boot_ci[1])], CI_BOOTSTRAP


def _resampled_weights(groups: Sequence[Any] | None, n: int, n_resamples: int, seed: int,
                       chunk: int = 200) -> Iterator[np.ndarray]:
    """Yield image weights (b, n) for ``n_resamples`` cluster-bootstrap resamples, ``chunk`` at a time.

    Each resample draws G groups (patients) with replacement out of the G present; an image's weight
    is the number of times its patient was drawn. Without groups every image is its own group.
    """
    if groups is None:
        inv, n_groups = np.arange(n), n
    else:
        if len(groups) != n:
            raise ValueError(f"{len(groups)} group ids for {n} images")
        _, inv = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
        inv = inv.ravel()
        n_groups = int(inv.max()) + 1 if n else 0
    rng = np.random.default_rng(seed)
    for lo in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - lo)
        draws = rng.integers(0, n_groups, size=(b, n_groups))
        counts = np.bincount((draws + n_groups * np.arange(b)[:, None]).ravel(), minlength=b * n_groups)
        yield counts.reshape(b, n_groups)[:, inv].astype(np.float64)


def _interval(samples: np.ndarray, level: float) -> list[float]:
    """Percentile interval of the finite samples; [nan, nan] when none is finite."""
    ok = samples[np.isfinite(samples)]
    if ok.size == 0:
        return [math.nan, math.nan]
    lo, hi = np.percentile(ok, [50 * (1 - level), 50 * (1 + level)])
    return [float(lo), float(hi)]


def bootstrap_ci(y_true: np.ndarray, scores: np.ndarray, thresholds: Mapping[str, float] | None = None, *,
                 groups: Sequence[Any] | None = None, n_resamples: int = 2000, seed: int = 0,
                 level: float = 0.95) -> dict[str, Any]:
    """Percentile bootstrap intervals for ROC AUC, PR AUC, Brier score and, at each named threshold,
    every metric of :data:`THRESHOLD_METRICS`.

    With ``groups`` (patient ids) it is a cluster bootstrap: patients are resampled with replacement
    and carry all their images, so several images of one patient do not count as independent
    evidence. The metrics of each resample are the same functions as the point estimates, applied to
    weighted counts. Resamples in which a metric is undefined (e.g. no positive patient drawn) are
    left out of that metric's interval; ``n_valid`` says how many remained.

    Returns:
        ``{"roc_auc": [lo, hi], "pr_auc": [..], "brier": [..], "thresholds": {name: {metric: [lo, hi]}},
        "n_valid": {metric or "name.metric": count}, "n_resamples", "n_groups", "level", "seed", "method"}``.
    """
    y, s = _check(y_true, scores)
    thresholds = dict(thresholds or {})
    lv = _levels(y, s)
    pos_mask, sq_err = y == 1, (s - y) ** 2
    preds = {name: decide(s, t) for name, t in thresholds.items()}
    draws: dict[str, list[np.ndarray]] = {"roc_auc": [], "pr_auc": [], "brier": []}
    for name in thresholds:
        for m in THRESHOLD_METRICS:
            draws[f"{name}.{m}"] = []
    for w in _resampled_weights(groups, y.size, n_resamples, seed):
        pos_w, neg_w = _level_weights(lv, w)
        draws["roc_auc"].append(_auc_from_levels(pos_w, neg_w))
        draws["pr_auc"].append(_ap_from_levels(pos_w, neg_w))
        draws["brier"].append(_ratio(w @ sq_err, w.sum(axis=1)))
        for name, pred in preds.items():
            c = Confusion(tp=w @ (pred & pos_mask), fp=w @ (pred & ~pos_mask),
                          tn=w @ (~pred & ~pos_mask), fn=w @ (~pred & pos_mask))
            for m, fn in _FROM_CONFUSION.items():
                draws[f"{name}.{m}"].append(np.atleast_1d(fn(c)))
    samples = {k: np.concatenate(v) if v else np.empty(0) for k, v in draws.items()}
    out: dict[str, Any] = {k: _interval(samples[k], level) for k in ("roc_auc", "pr_auc", "brier")}
    out["thresholds"] = {name: {m: _interval(samples[f"{name}.{m}"], level) for m in THRESHOLD_METRICS}
                         for name in thresholds}
    out["n_valid"] = {k: int(np.isfinite(v).sum()) for k, v in samples.items()}
    out.update(n_resamples=int(n_resamples), n_groups=len(set(groups)) if groups is not None else int(y.size),
               level=float(level), seed=int(seed),
               method="percentile, patient-level cluster bootstrap" if groups is not None else "percentile, image bootstrap")
    return out


def bootstrap_auc_difference(y_true: np.ndarray, scores_a: np.ndarray, scores_b: np.ndarray, *,
                             groups: Sequence[Any] | None = None, n_resamples: int = 2000, seed: int = 0,
                             level: float = 0.95) -> dict[str, Any]:
    """Paired bootstrap of AUC(a) - AUC(b) on the same images: each resample weights both models alike.

    Returns ``{"diff": point estimate, "ci": [lo, hi], "n_valid", "n_resamples"}``.
    """
    y, sa = _check(y_true, scores_a)
    _, sb = _check(y_true, scores_b)
    la, lb = _levels(y, sa), _levels(y, sb)
    diffs = [_auc_from_levels(*_level_weights(la, w)) - _auc_from_levels(*_level_weights(lb, w))
             for w in _resampled_weights(groups, y.size, n_resamples, seed)]
    d = np.concatenate(diffs) if diffs else np.empty(0)
    return {"diff": roc_auc(y, sa) - roc_auc(y, sb), "ci": _interval(d, level),
            "n_valid": int(np.isfinite(d).sum()), "n_resamples": int(n_resamples)}


def _delong_components(y: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """AUCs (k,) and DeLong's structural components for k score vectors (k, N).

    Fast midrank form (Sun & Xu, IEEE Signal Processing Letters 21(11), 2014): for a positive x_i,
    ``v_pos_i = (rank of x_i among all - rank among positives) / n_neg`` is the fraction of negatives
    it beats (ties 1/2); for a negative y_j, ``v_neg_j = 1 - (rank among all - rank among negatives) / n_pos``.
    The AUC is the mean of either.
    """
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    from scipy.stats import rankdata

    r_all = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    v_pos = (r_all[:, :m] - rankdata(pos, axis=1)) / n
    v_neg = 1.0 - (r_all[:, m:] - rankdata(neg, axis=1)) / m
    return v_pos.mean(axis=1), v_pos, v_neg


def delong_test(y_true: np.ndarray, scores_1: np.ndarray, scores_2: np.ndarray) -> dict[str, float]:
    """DeLong's test for two correlated ROC AUCs measured on the same cases.

    DeLong, DeLong & Clarke-Pearson, Biometrics 44(3):837-845, 1988: with S10 and S01 the covariance
    matrices (over positives and over negatives) of the structural components,
    ``Var(AUC1 - AUC2) = c' (S10 / m + S01 / n) c`` with c = (1, -1), and
    ``z = (AUC1 - AUC2) / sqrt(Var)`` is compared with a standard normal (two-sided).
    Cases are treated as independent: with several images per patient the p-value is optimistic,
    which is why the report also gives a paired patient-bootstrap interval.

    Returns ``{"auc_1", "auc_2", "diff", "se", "z", "p_value"}``; identical scores give p = 1.

    Raises:
        ValueError: fewer than two cases of either class (the variance is undefined).
    """
    y, s1 = _check(y_true, scores_1)
    _, s2 = _check(y_true, scores_2)
    m, n = int(y.sum()), int(y.size - y.sum())
    if m < 2 or n < 2:
        raise ValueError("DeLong's test needs at least two positive and two negative cases")
    aucs, v_pos, v_neg = _delong_components(y, np.vstack([s1, s2]))
    cov = np.cov(v_pos) / m + np.cov(v_neg) / n
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = float(aucs[0] - aucs[1])
    if var <= 1e-15:
        z, p = (0.0, 1.0) if abs(diff) < 1e-12 else (math.copysign(math.inf, diff), 0.0)
    else:
        z = diff / math.sqrt(var)
        from scipy.stats import norm

        p = float(2.0 * norm.sf(abs(z)))
    return {"auc_1": float(aucs[0]), "auc_2": float(aucs[1]), "diff": diff, "se": math.sqrt(max(var, 0.0)),
            "z": float(z), "p_value": p}
