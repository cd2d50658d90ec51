"""Binary classification metrics as small pure functions: arrays in, numbers out.

Conventions: ``y_true`` holds 0 (NORMAL) or 1 (PNEUMONIA); ``scores`` hold the
predicted probability of PNEUMONIA in [0, 1]; a case is called positive when
``score >= threshold``. Undefined ratios (for example sensitivity with no
positive case) are ``nan``, never a silent 0.

This module is the one implementation of every metric in pneumoscan: the
training loop, ``evaluate`` and the report all call these functions.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score

__all__ = [
    "Confusion",
    "confusion",
    "sensitivity",
    "specificity",
    "ppv",
    "npv",
    "accuracy",
    "balanced_accuracy",
    "f1",
    "roc_auc",
    "pr_auc",
    "brier",
    "ece",
    "threshold_metrics",
    "THRESHOLD_METRICS",
]


class Confusion(NamedTuple):
    tp: int
    fp: int
    tn: int
    fn: int


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


def _ratio(num: float, den: float) -> float:
    return float(num) / float(den) if den else math.nan


def confusion(y_true: np.ndarray, scores: np.ndarray, threshold: float = 0.5) -> Confusion:
    """Counts of true/false positives/negatives when ``score >= threshold`` means positive."""
    y, s = _check(y_true, scores)
    pred = s >= threshold
    pos = y == 1
    return Confusion(
        tp=int(np.sum(pred & pos)), fp=int(np.sum(pred & ~pos)), tn=int(np.sum(~pred & ~pos)), fn=int(np.sum(~pred & pos))
    )


def _sens(c: Confusion) -> float:
    return _ratio(c.tp, c.tp + c.fn)


def _spec(c: Confusion) -> float:
    return _ratio(c.tn, c.tn + c.fp)


#: Threshold-dependent metrics as functions of the confusion counts (computed once per threshold).
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


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; ``nan`` when only one class is present."""
    y, s = _check(y_true, scores)
    if y.size == 0 or y.min() == y.max():
        return math.nan
    return float(roc_auc_score(y, s))


def pr_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve (average precision); ``nan`` with no positive case."""
    y, s = _check(y_true, scores)
    if y.size == 0 or y.max() == 0:
        return math.nan
    return float(average_precision_score(y, s))


def brier(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Mean squared error of the probabilities (lower is better)."""
    y, s = _check(y_true, scores)
    return float(np.mean((s - y) ** 2)) if y.size else math.nan


def ece(y_true: np.ndarray, scores: np.ndarray, n_bins: int = 10) -> float:
    """Expected calibration error with ``n_bins`` equal-width bins over [0, 1].

    The weighted mean over bins of |fraction positive - mean score|.
    """
    y, s = _check(y_true, scores)
    if y.size == 0:
        return math.nan
    bins = np.clip((s * n_bins).astype(np.int64), 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            total += m.sum() * abs(y[m].mean() - s[m].mean())
    return float(total / y.size)


def threshold_metrics(y_true: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, float]:
    """Every threshold-dependent metric at ``threshold``, plus the confusion counts and the threshold."""
    c = confusion(y_true, scores, threshold)
    out: dict[str, float] = {name: fn(c) for name, fn in _FROM_CONFUSION.items()}
    out.update(c._asdict())
    out["threshold"] = float(threshold)
    return out
