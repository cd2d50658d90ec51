"""The evaluation's cause section: is a pneumonia more like bacterial or viral, measured on the evaluated films
whose cause is known (the data set's labels; films without one are counted and left out).

``metrics.json`` holds it under ``models[i].cause``: the bacterial-vs-viral ROC AUC with its patient-bootstrap
interval, sensitivity (viral) and specificity (bacterial) at the stored cause threshold, 3 x 3 confusion matrices
(truth NORMAL / bacterial / viral; predicted not flagged / bacterial / viral) at the stored operating points, and the
calibration of the cause output (ECE and Brier before and after its temperature).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pneumoscan import metrics as M
from pneumoscan.onboarding.cause import cause_targets

__all__ = ["CONFUSION_LABELS", "cause_section", "confusion_3x3"]

#: Rows (truth) and columns (prediction) of the 3 x 3 confusion matrices.
CONFUSION_LABELS = {"truth": ["NORMAL", "BACTERIAL", "VIRAL"], "predicted": ["NOT FLAGGED", "BACTERIAL", "VIRAL"]}


def confusion_3x3(labels: np.ndarray, targets: np.ndarray, probs: np.ndarray, cause_probs: np.ndarray,
                  threshold: float, cause_threshold: float) -> list[list[int]]:
    """Counts ``[truth][predicted]`` over NORMAL films and pneumonia films of known cause: predicted "not flagged"
    below the main ``threshold``, else bacterial or viral by ``cause_threshold`` (the decision rule, both times)."""
    truth = np.where(labels == 0, 0, np.where(targets == 1, 2, 1))
    keep = (labels == 0) | (targets >= 0)
    flagged = M.decide(probs, threshold)
    viral = M.decide(cause_probs, cause_threshold)
    pred = np.where(~flagged, 0, np.where(viral, 2, 1))
    out = np.zeros((3, 3), dtype=np.int64)
    np.add.at(out, (truth[keep], pred[keep]), 1)
    return out.tolist()


def cause_section(probs: np.ndarray, cause_probs: np.ndarray | None, cause_raw: np.ndarray | None,
                  records: Sequence[Any], *, threshold: float, cause_meta: dict[str, Any] | None,
                  n_resamples: int, seed: int, level: float) -> dict[str, Any] | None:
    """The cause section of one model (None for a model without a cause output or operating point)."""
    if cause_probs is None or cause_meta is None:
        return None
    labels = np.array([int(r.label) for r in records], dtype=np.int64)
    targets = cause_targets(records)
    known = targets >= 0
    y, p = targets[known], np.asarray(cause_probs, dtype=np.float64)[known]
    groups = [r.patient_id for r, k in zip(records, known) if k]
    ct = float(cause_meta["threshold"])
    out: dict[str, Any] = {
        "threshold": ct, "temperature": float(cause_meta.get("temperature", 1.0)), "rule": cause_meta.get("rule"),
        "method": cause_meta.get("method"), "n_known": int(known.sum()), "n_viral": int(y.sum()),
        "n_bacterial": int((1 - y).sum()), "n_unknown": int(((labels == 1) & ~known).sum()),
        "validation": cause_meta.get("val"),
        "confusion_labels": CONFUSION_LABELS,
        "confusion": confusion_3x3(labels, targets, probs, np.asarray(cause_probs), threshold, ct),
    }
    if min(out["n_viral"], out["n_bacterial"]) == 0:
        out["note"] = "the evaluated films hold no pneumonia of one of the causes: no ROC or interval"
        return out
    boot = M.bootstrap_ci(y, p, {"cause": ct}, groups=groups, n_resamples=n_resamples, seed=seed, level=level)
    at = boot["thresholds"]["cause"]
    out.update({
        "roc_auc": {"value": M.roc_auc(y, p), "ci": boot["roc_auc"], "ci_method": boot["method"]},
        "sensitivity_viral": {"value": M.sensitivity(y, p, ct), "ci": at["sensitivity"]},
        "specificity_viral": {"value": M.specificity(y, p, ct), "ci": at["specificity"]},
        "accuracy": {"value": M.accuracy(y, p, ct), "ci": at["accuracy"]},
        "balanced_accuracy": {"value": M.balanced_accuracy(y, p, ct), "ci": at["balanced_accuracy"]},
        "calibration": {"ece": M.ece(y, p), "brier": M.brier(y, p),
                        **({"ece_raw": M.ece(y, np.asarray(cause_raw)[known]),
                            "brier_raw": M.brier(y, np.asarray(cause_raw)[known])} if cause_raw is not None else {})},
    })
    return out
