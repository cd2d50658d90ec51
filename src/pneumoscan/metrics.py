"""Binary classification metrics as small pure functions: arrays in, numbers out.

Conventions: ``y_true`` holds 0 (NORMAL) or 1 (PNEUMONIA); ``scores`` hold the
predicted probability of PNEUMONIA in [0, 1]; a case is called positive when
``score >= threshold``. Undefined ratios (for example sensitivity with no
positive case) are ``nan``, never a silent 0.

This module is the one implementation of every metric in pneumoscan: the
training loop, ``evaluate`` and the report all call these functions. The
ranking metrics (ROC AUC, average precision) are computed from per-score-level
weights, so the point estimate and every bootstrap resample go through the
same code (a resample is only a different weight per image).

Sections: point metrics; curves and threshold selection; calibration
(temperature scaling, reliability bins); uncertainty (patient bootstrap,
DeLong's test).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit
from scipy.stats import norm, rankdata

__all__ = [
    "Confusion", "confusion", "sensitivity", "specificity", "ppv", "npv", "accuracy", "balanced_accuracy", "f1",
    "roc_auc", "pr_auc", "brier", "ece", "threshold_metrics", "THRESHOLD_METRICS",
    "roc_points", "pr_points", "threshold_for_sensitivity", "threshold_min_cost", "youden_threshold",
    "apply_temperature", "binary_nll", "fit_temperature", "reliability_curve",
    "bootstrap_ci", "bootstrap_auc_difference", "delong_test",
]


class Confusion(NamedTuple):
    """Counts (ints), or weighted counts (float arrays of shape (B,)) inside the bootstrap."""

    tp: Any
    fp: Any
    tn: Any
    fn: Any


def _check(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true has {y.size} values but scores has {s.size}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("y_true must contain only 0 and 1")
    if s.size and not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinity")
    return y, s


def _ratio(num: Any, den: Any) -> Any:
    """num / den, ``nan`` where den is 0. Scalars give a float, arrays an array (the bootstrap path)."""
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    out = np.divide(num, den, out=np.full(np.broadcast(num, den).shape, np.nan), where=den != 0)
    return float(out) if out.ndim == 0 else out


# --- point metrics -----------------------------------------------------------------------------------


def confusion(y_true: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> Confusion:
    """Counts of true/false positives/negatives when ``score >= threshold`` means positive."""
    y, s = _check(y_true, scores)
    pred = s >= threshold
    pos = y == 1
    return Confusion(
        tp=int(np.sum(pred & pos)), fp=int(np.sum(pred & ~pos)), tn=int(np.sum(~pred & ~pos)), fn=int(np.sum(~pred & pos))
    )


def _sens(c: Confusion) -> Any:
    return _ratio(c.tp, c.tp + c.fn)


def _spec(c: Confusion) -> Any:
    return _ratio(c.tn, c.tn + c.fp)


#: Threshold-dependent metrics as functions of the confusion counts (computed once per threshold).
#: They work elementwise, so the bootstrap applies the very same formulas to arrays of weighted counts.
_FROM_CONFUSION = {
    "sensitivity": _sens,
    "specificity": _spec,
    "ppv": lambda c: _ratio(c.tp, c.tp + c.fp),
    "npv": lambda c: _ratio(c.tn, c.tn + c.fn),
    "accuracy": lambda c: _ratio(c.tp + c.tn, c.tp + c.tn + c.fp + c.fn),
    "balanced_accuracy": lambda c: 0.5 * (_sens(c) + _spec(c)),
    "f1": lambda c: _ratio(2 * c.tp, 2 * c.tp + c.fp + c.fn),
}
THRESHOLD_METRICS = tuple(_FROM_CONFUSION)


def sensitivity(y_true: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> float:
    """True positive rate (recall): the fraction of pneumonia cases flagged."""
    return _sens(confusion(y_true, scores, threshold))


def specificity(y_true: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> float:
    """True negative rate: the fraction of normal cases not flagged."""
    return _spec(confusion(y_true, scores, threshold))


def ppv(y_true: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> float:
    """Positive predictive value (precision)."""
    return _FROM_CONFUSION["ppv"](confusion(y_true, scores, threshold))


def npv(y_true: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> float:
    """Negative predictive value."""
    return _FROM_CONFUSION["npv"](confusion(y_true, scores, threshold))


def accuracy(y_true: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> float:
    return _FROM_CONFUSION["accuracy"](confusion(y_true, scores, threshold))


def balanced_accuracy(y_true: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> float:
    """Mean of sensitivity and specificity."""
    return _FROM_CONFUSION["balanced_accuracy"](confusion(y_true, scores, threshold))


def f1(y_true: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> float:
    return _FROM_CONFUSION["f1"](confusion(y_true, scores, threshold))


class _Levels(NamedTuple):
    """The distinct scores in ascending order and how to sum per-image weights onto them."""

    values: np.ndarray  # (K,) distinct scores, ascending
    order: np.ndarray  # (N,) image indices sorted by score
    starts: np.ndarray  # (K,) first position of each level in ``order``
    pos_sorted: np.ndarray  # (N,) 1.0 where the sorted image is positive


def _levels(y: np.ndarray, s: np.ndarray) -> _Levels:
    order = np.argsort(s, kind="stable")
    ss = s[order]
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]]) if s.size else np.empty(0, dtype=np.int64)
    return _Levels(ss[starts], order, starts, (y[order] == 1).astype(np.float64))


def _level_weights(lv: _Levels, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Positive and negative weight at each level, each (B, K); ``w`` is (B, N) image weights (None: all 1)."""
    ws = np.ones((1, lv.order.size)) if w is None else np.atleast_2d(w)[:, lv.order]
    pos = np.add.reduceat(ws * lv.pos_sorted, lv.starts, axis=1)
    neg = np.add.reduceat(ws * (1.0 - lv.pos_sorted), lv.starts, axis=1)
    return pos, neg


def _auc_from_levels(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """P(score of a positive > score of a negative) + 0.5 P(tie), the Mann-Whitney form of the ROC AUC."""
    below = np.cumsum(neg, axis=1) - neg
    return _ratio((pos * (below + 0.5 * neg)).sum(axis=1), pos.sum(axis=1) * neg.sum(axis=1))


def _ap_from_levels(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Average precision: sum over thresholds (descending) of recall gain x precision (scikit-learn's definition)."""
    p, n = pos[:, ::-1], neg[:, ::-1]
    tp, fp = np.cumsum(p, axis=1), np.cumsum(n, axis=1)
    prec = np.divide(tp, tp + fp, out=np.zeros_like(tp), where=(tp + fp) > 0)
    return _ratio((p * prec).sum(axis=1), p.sum(axis=1))


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half); ``nan`` when only one class is present."""
    y, s = _check(y_true, scores)
    if y.size == 0 or y.min() == y.max():
        return math.nan
    return float(_auc_from_levels(*_level_weights(_levels(y, s)))[0])


def pr_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve (average precision, as scikit-learn); ``nan`` with no positive case."""
    y, s = _check(y_true, scores)
    if y.size == 0 or y.max() == 0:
        return math.nan
    return float(_ap_from_levels(*_level_weights(_levels(y, s)))[0])


def brier(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Mean squared error of the probabilities (lower is better)."""
    y, s = _check(y_true, scores)
    return float(np.mean((s - y) ** 2)) if y.size else math.nan


def threshold_metrics(y_true: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Every threshold-dependent metric at ``threshold``, plus the confusion counts and the threshold."""
    c = confusion(y_true, scores, threshold)
    out: dict[str, float] = {name: fn(c) for name, fn in _FROM_CONFUSION.items()}
    out.update(c._asdict())
    out["threshold"] = float(threshold)
    return out


# --- curves and threshold selection ------------------------------------------------------------------


def _cumulative_from_top(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each distinct score t (descending): (t, #positives with score >= t, #negatives with score >= t)."""
    pos, neg = _level_weights(lv := _levels(y, s))
    return lv.values[::-1], np.cumsum(pos[0, ::-1]), np.cumsum(neg[0, ::-1])


def roc_points(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve ``(fpr, tpr, thresholds)``, thresholds descending, starting at (0, 0) with threshold +inf."""
    y, s = _check(y_true, scores)
    t, tp, fp = _cumulative_from_top(y, s)
    fpr, tpr = _ratio(fp, np.full(fp.shape, y.size - y.sum())), _ratio(tp, np.full(tp.shape, y.sum()))
    return np.r_[0.0, fpr], np.r_[0.0, tpr], np.r_[np.inf, t]


def pr_points(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall curve ``(recall, precision, thresholds)``, thresholds descending."""
    y, s = _check(y_true, scores)
    t, tp, fp = _cumulative_from_top(y, s)
    recall = _ratio(tp, np.full(tp.shape, y.sum()))
    return np.atleast_1d(recall), np.atleast_1d(_ratio(tp, tp + fp)), t


def threshold_for_sensitivity(y_true: np.ndarray, scores: np.ndarray, target: float = 0.95) -> float:
    """The HIGHEST threshold whose sensitivity on ``(y_true, scores)`` is at least ``target``.

    Sensitivity only changes at the scores of positive cases, so the answer is the k-th highest
    positive score with ``k = ceil(target * n_positive)``; tied scores may push the sensitivity
    above the target. Returns a score value (``score >= threshold`` is positive).

    Raises:
        ValueError: ``target`` outside (0, 1], or no positive case.
    """
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target sensitivity must be in (0, 1], got {target}")
    y, s = _check(y_true, scores)
    pos = np.sort(s[y == 1])[::-1]
    if pos.size == 0:
        raise ValueError("cannot choose a threshold for a sensitivity: there is no positive case")
    k = max(1, math.ceil(target * pos.size - 1e-9))  # the epsilon keeps 0.95 * 20 from rounding up to 20
    return float(pos[k - 1])


def threshold_min_cost(y_true: np.ndarray, scores: np.ndarray, *, miss_cost: float = 3.0,
                       min_sensitivity: float = 0.0) -> float:
    """The threshold with the lowest cost ``miss_cost * FN + FP`` among those whose sensitivity is at least
    ``min_sensitivity``; ties go to the highest threshold (fewest false alarms).

    ``miss_cost`` is what one missed positive costs in false alarms. With ``miss_cost=0`` the cost is the
    false alarms alone, and the answer is :func:`threshold_for_sensitivity` (the highest threshold reaching
    the sensitivity). Candidates are the observed scores (``score >= threshold`` is positive).

    Raises:
        ValueError: ``miss_cost < 0``, ``min_sensitivity`` outside [0, 1], or no positive case.
    """
    if miss_cost < 0 or not math.isfinite(miss_cost):
        raise ValueError(f"miss_cost must be a finite number >= 0, got {miss_cost}")
    if not 0.0 <= min_sensitivity <= 1.0:
        raise ValueError(f"min_sensitivity must be in [0, 1], got {min_sensitivity}")
    y, s = _check(y_true, scores)
    n_pos = int(y.sum())
    if n_pos == 0:
        raise ValueError("cannot choose a threshold for a sensitivity: there is no positive case")
    cand, tp, fp = _cumulative_from_top(y, s)  # thresholds from the highest score down, with TP/FP at each
    fn = n_pos - tp
    ok = tp >= math.ceil(min_sensitivity * n_pos - 1e-9)
    cost = np.where(ok, miss_cost * fn + fp, np.inf)
    return float(cand[int(np.argmin(cost))])  # argmin takes the first minimum: the highest threshold


def youden_threshold(y_true: np.ndarray, scores: np.ndarray) -> float:
    """The threshold (a score value) maximising Youden's J = sensitivity + specificity - 1.

    Among equally good thresholds the LOWEST is returned: it has the higher sensitivity.

    Raises:
        ValueError: only one class is present.
    """
    y, s = _check(y_true, scores)
    n_pos, n_neg = int(y.sum()), int(y.size - y.sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError("Youden's J needs both classes")
    t, tp, fp = _cumulative_from_top(y, s)
    j = tp / n_pos - fp / n_neg
    best = np.flatnonzero(j >= j.max() - 1e-12)
    return float(t[best[-1]])  # thresholds are descending: the last of the best is the lowest


# --- calibration -------------------------------------------------------------------------------------


def apply_temperature(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Probabilities ``sigmoid(logits / temperature)`` as float64."""
    return expit(np.asarray(logits, dtype=np.float64) / float(temperature))


def binary_nll(y_true: np.ndarray, logits: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (nats) of labels under ``sigmoid(logits / T)``; stable for large logits."""
    y = np.asarray(y_true, dtype=np.float64).ravel()
    z = np.asarray(logits, dtype=np.float64).ravel() / float(temperature)
    return float(np.mean(np.logaddexp(0.0, z) - y * z)) if y.size else math.nan


def fit_temperature(logits: np.ndarray, y_true: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """Temperature scaling (Guo et al., 2017): the scalar T > 0 minimising :func:`binary_nll` of ``logits / T``.

    A bounded 1-D search over log T (Brent's method via ``scipy.optimize.minimize_scalar``), so it
    always returns a finite T inside ``bounds``. Returns 1.0 when only one class is present, or when
    every logit already has the right sign (the classes are separated at 0): the NLL then keeps
    falling as T -> 0 and has no minimum, so the data cannot tell what T should be. T > 1 softens
    over-confident scores; T only rescales, so it never changes the ranking (AUC).
    """
    y = np.asarray(y_true, dtype=np.float64).ravel()
    z = np.asarray(logits, dtype=np.float64).ravel()
    if y.size != z.size:
        raise ValueError(f"{z.size} logits but {y.size} labels")
    if y.size == 0 or y.min() == y.max() or not np.isfinite(z).all() or np.all((2 * y - 1) * z > 0):
        return 1.0
    res = minimize_scalar(lambda log_t: binary_nll(y, z, math.exp(log_t)),
                          bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded",
                          options={"xatol": 1e-6})
    return float(math.exp(res.x))


def reliability_curve(y_true: np.ndarray, scores: np.ndarray, n_bins: int = 10) -> dict[str, np.ndarray]:
    """Equal-width bins over [0, 1]: ``edges`` (n_bins+1,), and per bin ``count``, ``mean_score``, ``frac_pos``."""
    y, s = _check(y_true, scores)
    bins = np.clip((s * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins).astype(np.float64)
    return {"edges": np.linspace(0.0, 1.0, n_bins + 1), "count": count,
            "mean_score": _ratio(np.bincount(bins, weights=s, minlength=n_bins), count),
            "frac_pos": _ratio(np.bincount(bins, weights=y, minlength=n_bins), count)}


def ece(y_true: np.ndarray, scores: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error with ``n_bins`` equal-width bins over [0, 1].

    The weighted mean over bins of |fraction positive - mean score|.
    """
    r = reliability_curve(y_true, scores, n_bins)
    n = r["count"].sum()
    if n == 0:
        return math.nan
    keep = r["count"] > 0
    return float(np.sum(r["count"][keep] * np.abs(r["frac_pos"][keep] - r["mean_score"][keep])) / n)


# --- uncertainty: patient (cluster) bootstrap and DeLong's test ----------------------------------------


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
    preds = {name: s >= t for name, t in thresholds.items()}
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
        p = float(2.0 * norm.sf(abs(z)))
    return {"auc_1": float(aucs[0]), "auc_2": float(aucs[1]), "diff": diff, "se": math.sqrt(max(var, 0.0)),
            "z": float(z), "p_value": p}


# --- one model's summary ---------------------------------------------------------------------------------

#: Names of the thresholds every summary reports, in display order.
THRESHOLD_NAMES = ("operating", "fixed_0.5", "youden")


def _value_ci(value: float, ci: Sequence[float]) -> dict[str, Any]:
    return {"value": float(value), "ci": [float(ci[0]), float(ci[1])]}


def summarize_scores(y: np.ndarray, probs: np.ndarray, thresholds: Mapping[str, float | None], *,
                     groups: Sequence[str] | None = None, causes: Sequence[str | None] | None = None,
                     n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Every metric of one model on one set of images, each with a bootstrap interval.

    Args:
        y: labels (N,), 0/1. probs: calibrated pneumonia probabilities (N,).
        thresholds: name -> threshold (None entries are skipped), e.g. operating, 0.5 and Youden.
        groups: patient id per image: the bootstrap resamples patients. causes: "bacteria"/"virus"/None
            per image: adds the sensitivity per cause (pneumonia images only).

    Returns:
        JSON-safe dict: counts, ``roc_auc``/``pr_auc``/``brier`` as ``{"value", "ci"}``, ``ece``,
        ``thresholds[name] = {"threshold", "confusion", "metrics": {metric: {"value", "ci"}}}``,
        ``subgroups["cause"][cause]`` and ``bootstrap`` (how the intervals were made).
    """
    y = np.asarray(y, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    ths = {k: float(v) for k, v in thresholds.items() if v is not None}
    kw = dict(n_resamples=n_resamples, seed=seed, level=level)
    ci = bootstrap_ci(y, probs, ths, groups=groups, **kw)
    out: dict[str, Any] = {
        "n_images": int(y.size), "n_positive": int(y.sum()), "n_negative": int(y.size - y.sum()),
        "n_patients": len(set(groups)) if groups is not None else int(y.size),
        "prevalence": float(y.mean()) if y.size else math.nan,
        "roc_auc": _value_ci(roc_auc(y, probs), ci["roc_auc"]),
        "pr_auc": _value_ci(pr_auc(y, probs), ci["pr_auc"]),
        "brier": _value_ci(brier(y, probs), ci["brier"]),
        "ece": ece(y, probs),
        "thresholds": {},
        "bootstrap": {k: ci[k] for k in ("n_resamples", "n_groups", "level", "seed", "method")},
    }
    for name, t in ths.items():
        tm = threshold_metrics(y, probs, t)
        out["thresholds"][name] = {
            "threshold": t, "confusion": {k: int(tm[k]) for k in ("tp", "fp", "tn", "fn")},
            "metrics": {m: _value_ci(tm[m], ci["thresholds"][name][m]) for m in THRESHOLD_METRICS},
        }
    out["subgroups"] = {"cause": {}}
    if causes is not None:
        cause_arr = np.array([c or "" for c in causes], dtype=object)
        for cause in ("bacteria", "virus"):
            sel = np.flatnonzero((cause_arr == cause) & (y == 1))
            if sel.size == 0:
                continue
            sub_groups = [groups[i] for i in sel] if groups is not None else None
            sub = bootstrap_ci(y[sel], probs[sel], ths, groups=sub_groups, **kw)
            out["subgroups"]["cause"][cause] = {
                "n_images": int(sel.size), "n_patients": len(set(sub_groups)) if sub_groups else int(sel.size),
                "sensitivity": {name: _value_ci(sensitivity(y[sel], probs[sel], t),
                                                sub["thresholds"][name]["sensitivity"]) for name, t in ths.items()},
            }
    return out
