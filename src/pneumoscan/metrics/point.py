"""Point metrics at a threshold, and the ranking metrics (ROC AUC, average precision) from score levels."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from pneumoscan.constants import DECISION_WORDS, NOT_READ_WORDS, SCORE_SCALE


def decide(scores: Any, threshold: float) -> Any:
    """THE decision rule, written once: positive (PNEUMONIA) when ``score >= threshold``.

    A number gives a ``bool``; an array gives a boolean array. :func:`pneumoscan.inference.scoring.decide` is this function.
    """
    out = np.asarray(scores) >= threshold
    return bool(out) if out.ndim == 0 else out


def score_100(probability: float) -> float:
    """The score people see: the probability on 0 to 100, one decimal (0.44226 -> 44.2). Thresholds use it too."""
    return round(float(probability) * SCORE_SCALE, 1)


def decision_words(decision: str | None) -> str:
    """The one wording of a machine decision label (``PNEUMONIA``, ``NORMAL``, ``OUT_OF_SCOPE``) for people;
    ``None`` or ``""`` (no decision: the file could not be read) gives :data:`NOT_READ_WORDS`."""
    if not decision:
        return NOT_READ_WORDS
    return DECISION_WORDS.get(decision, decision)


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
    pred = decide(s, threshold)
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
