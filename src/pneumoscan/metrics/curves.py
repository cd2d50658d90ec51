"""ROC and PR curves, and the threshold-selection rules (target sensitivity, minimum cost, Youden)."""

from __future__ import annotations

import math

import numpy as np

from pneumoscan.metrics.point import _check, _level_weights, _levels, _ratio


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
