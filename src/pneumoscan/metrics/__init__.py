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

Modules: :mod:`.point` (point and ranking metrics), :mod:`.curves` (curves and threshold selection),
:mod:`.calibration` (temperature scaling, reliability bins), :mod:`.uncertainty` (patient bootstrap,
DeLong's test), :mod:`.summary` (one model's summary with intervals).
"""

from __future__ import annotations

from pneumoscan.metrics.calibration import (
    apply_temperature,
    binary_nll,
    ece,
    ece_at_prevalence,
    fit_temperature,
    reliability_curve,
)
from pneumoscan.metrics.curves import (
    pr_points,
    roc_points,
    threshold_for_sensitivity,
    threshold_min_cost,
    youden_threshold,
)
from pneumoscan.metrics.point import (
    THRESHOLD_METRICS,
    Confusion,
    accuracy,
    balanced_accuracy,
    brier,
    confusion,
    decide,
    decision_words,
    f1,
    npv,
    ppv,
    pr_auc,
    roc_auc,
    score_100,
    sensitivity,
    specificity,
    threshold_metrics,
)
from pneumoscan.metrics.summary import (
    THRESHOLD_NAMES,
    summarize_scores,
)
from pneumoscan.metrics.uncertainty import (
    bootstrap_auc_difference,
    bootstrap_ci,
    delong_test,
)

__all__ = [
    "decide",
    "decision_words",
    "Confusion",
    "THRESHOLD_METRICS",
    "THRESHOLD_NAMES",
    "accuracy",
    "apply_temperature",
    "balanced_accuracy",
    "binary_nll",
    "bootstrap_auc_difference",
    "bootstrap_ci",
    "brier",
    "confusion",
    "delong_test",
    "ece",
    "ece_at_prevalence",
    "f1",
    "fit_temperature",
    "npv",
    "ppv",
    "pr_auc",
    "pr_points",
    "reliability_curve",
    "roc_auc",
    "roc_points",
    "score_100",
    "sensitivity",
    "specificity",
    "summarize_scores",
    "threshold_for_sensitivity",
    "threshold_metrics",
    "threshold_min_cost",
    "youden_threshold",
]
