"""One model's summary on one set of images: every metric with its interval (patient bootstrap; Clopper-Pearson
for a proportion whose bootstrap interval has zero width, see :func:`~pneumoscan.metrics.uncertainty.proportion_ci`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pneumoscan.metrics.calibration import ece
from pneumoscan.metrics.point import (
    THRESHOLD_METRICS,
    Confusion,
    brier,
    confusion,
    pr_auc,
    roc_auc,
    sensitivity,
    threshold_metrics,
)
from pneumoscan.metrics.uncertainty import (
    CI_BOOTSTRAP,
    CI_NO_SPREAD,
    PROPORTION_COUNTS,
    bootstrap_ci,
    is_degenerate,
    proportion_ci,
)

#: Names of the thresholds every summary reports, in display order.
THRESHOLD_NAMES = ("operating", "fixed_0.5", "youden")


def _value_ci(value: float, ci: Sequence[float]) -> dict[str, Any]:
    """``{"value", "ci", "ci_method"}`` for a bootstrap interval (a metric that is not a binomial proportion)."""
    method = CI_NO_SPREAD if is_degenerate(ci) else CI_BOOTSTRAP
    return {"value": float(value), "ci": [float(ci[0]), float(ci[1])], "ci_method": method}


def _metric_ci(metric: str, value: float, boot: Sequence[float], c: Confusion, level: float) -> dict[str, Any]:
    """A threshold metric with its interval: a proportion's degenerate bootstrap interval becomes exact."""
    if metric not in PROPORTION_COUNTS:
        return _value_ci(value, boot)
    ci, method = proportion_ci(boot, *PROPORTION_COUNTS[metric](c), level=level)
    return {"value": float(value), "ci": ci, "ci_method": method}


def summarize_scores(y: np.ndarray, probs: np.ndarray, thresholds: Mapping[str, float | None], *,
                     groups: Sequence[str] | None = None, causes: Sequence[str | None] | None = None,
                     n_resamples: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Every metric of one model on one set of images, each with an interval.

    Intervals come from the patient-level bootstrap, except for a proportion (sensitivity, specificity, PPV,
    NPV, accuracy) whose bootstrap interval has zero width: it gets the Clopper-Pearson interval of its image
    counts instead (``ci_method`` says which; :data:`~pneumoscan.metrics.uncertainty.CI_NO_SPREAD` marks a
    zero-width bootstrap interval of another metric, e.g. an AUC of 1).

    Args:
        y: labels (N,), 0/1. probs: calibrated pneumonia probabilities (N,).
        thresholds: name -> threshold (None entries are skipped), e.g. operating, 0.5 and Youden.
        groups: patient id per image: the bootstrap resamples patients. causes: "bacteria"/"virus"/None
            per image: adds the sensitivity per cause (pneumonia images only).

    Returns:
        JSON-safe dict: counts, ``roc_auc``/``pr_auc``/``brier`` as ``{"value", "ci", "ci_method"}``, ``ece``,
        ``thresholds[name] = {"threshold", "confusion", "metrics": {metric: {"value", "ci", "ci_method"}}}``,
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
        conf = Confusion(*(int(tm[k]) for k in Confusion._fields))
        out["thresholds"][name] = {
            "threshold": t, "confusion": {k: int(tm[k]) for k in ("tp", "fp", "tn", "fn")},
            "metrics": {m: _metric_ci(m, tm[m], ci["thresholds"][name][m], conf, level) for m in THRESHOLD_METRICS},
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
                "sensitivity": {name: _metric_ci("sensitivity", sensitivity(y[sel], probs[sel], t),
                                                 sub["thresholds"][name]["sensitivity"],
                                                 confusion(y[sel], probs[sel], t), level) for name, t in ths.items()},
            }
    return out
