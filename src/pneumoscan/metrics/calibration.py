"""Calibration: temperature scaling, likelihood, reliability bins, expected calibration error."""

from __future__ import annotations

import math

import numpy as np

from pneumoscan.metrics.point import _check, _ratio


def apply_temperature(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Probabilities ``sigmoid(logits / temperature)`` as float64."""
    from scipy.special import (
        expit,  # scipy is imported when used: predict's start-up does not need it
    )

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
    from scipy.optimize import minimize_scalar

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


def ece_at_prevalence(y_true: np.ndarray, scores: np.ndarray, prevalence: float, n_bins: int = 10) -> float:
    """:func:`ece` with each class reweighted so that positives make up ``prevalence`` of the images: the calibration
    error these scores would have at a site with that case mix and films like these of each class (validation here
    is 77% pneumonia; most sites see far fewer). Equal to :func:`ece` at the images' own prevalence; NaN when a
    class is missing."""
    y, s = _check(y_true, scores)
    pi = float(y.mean()) if y.size else math.nan
    if not 0.0 < pi < 1.0 or not 0.0 <= prevalence <= 1.0:
        return math.nan
    w = np.where(y == 1, prevalence / pi, (1.0 - prevalence) / (1.0 - pi))
    bins = np.clip((s * n_bins).astype(np.int64), 0, n_bins - 1)
    gap = np.bincount(bins, weights=w * y, minlength=n_bins) - np.bincount(bins, weights=w * s, minlength=n_bins)
    return float(np.abs(gap).sum() / w.sum())
