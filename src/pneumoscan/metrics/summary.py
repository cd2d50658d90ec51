"""One model's summary on one set of images: every metric with its bootstrap interval."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pneumoscan.metrics.calibration import ece
from pneumoscan.metrics.point import (
    THRESHOLD_METRICS,
    brier,
    pr_auc,
    roc_auc,
    sensitivity,
    threshold_metrics,
)
from pneumoscan.metrics.uncertainty import bootstrap_ci

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
