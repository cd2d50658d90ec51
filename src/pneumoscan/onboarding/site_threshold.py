"""``pneumoscan calibrate`` moves the operating point only as far as the site's labelled films show is needed.

Issue #26: on 100 labelled films (33 normal) the old rule refitted the temperature (0.61 -> 1.82) and took the
lowest-cost threshold at the target sensitivity, which moved the threshold down and cost the site a tenth of its
specificity (0.875 -> 0.777) although the adapted model already met its sensitivity target. Now:

* **The threshold** (:func:`site_threshold`): the current one is KEPT when its sensitivity on the films is
  compatible with the target, that is when the upper end of its exact (Clopper-Pearson, two-sided 95%) interval
  reaches the target: the films do not show that it misses it. Otherwise it moves down to the HIGHEST threshold
  whose sensitivity on the films reaches the target (with ``miss_cost``: the lowest-cost one among those). With a
  false-alarm ceiling (``max_false_alarm_rate``, a specificity floor), a threshold whose false-alarm rate on the
  normal films is above it moves UP to the lowest threshold under the ceiling, provided the films' sensitivity
  there still reaches the target; when both cannot be met, sensitivity wins (the house rule) and the result says so.
* **The temperature** (:func:`choose_temperature`): refitted only with at least :data:`TEMPERATURE_MIN_PER_CLASS`
  films of each class, and only when the fitted temperature predicts held-out films better than the current one:
  in :data:`TEMPERATURE_FOLDS`-fold cross-fitting (stratified, seeded), the temperature fitted on the other folds
  must give each held-out fold's films a lower total negative log-likelihood than the current temperature does.
  A temperature change alone never moves a decision: the current threshold is carried over at the same logit.
* **The trade** (:func:`threshold_curve`): the films' sensitivity and specificity, with exact intervals, at the
  current and the proposed threshold and at the thresholds where the films' sensitivity steps through
  1.00-0.90, for the command to show before it writes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from pneumoscan.metrics import binary_nll, fit_temperature, threshold_for_sensitivity, threshold_min_cost
from pneumoscan.metrics.uncertainty import exact_proportion_ci

__all__ = ["TEMPERATURE_BOUNDS", "TEMPERATURE_FOLDS", "TEMPERATURE_MIN_PER_CLASS", "carry_threshold",
           "choose_temperature", "site_threshold", "threshold_curve", "threshold_stats"]

#: The range the temperature is searched in; a fit that ends at either end found no interior optimum.
TEMPERATURE_BOUNDS = (0.05, 20.0)
#: The fewest films of EACH class a site's temperature is refitted on (10 of each per cross-fitting fold). The
#: temperature of issue #26 that jumped from 0.61 to 1.82 was fitted on 33 normal films.
TEMPERATURE_MIN_PER_CLASS = 50
TEMPERATURE_FOLDS = 5
#: The sensitivities on the films at which :func:`threshold_curve` adds a row (the highest threshold reaching each).
CURVE_SENSITIVITIES = (1.0, 0.99, 0.98, 0.97, 0.96, 0.95, 0.93, 0.90)


# --- temperature --------------------------------------------------------------------------------------


def _folds(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A fold number per film, stratified by label, seeded."""
    rng = np.random.default_rng(seed)
    fold = np.empty(y.size, dtype=np.int64)
    for cls in (0, 1):
        idx = rng.permutation(np.flatnonzero(y == cls))
        fold[idx] = np.arange(idx.size) % k
    return fold


def _fit(z: np.ndarray, y: np.ndarray, bounds: tuple[float, float], floor: float) -> float:
    return max(float(floor), fit_temperature(z, y, bounds=bounds))


def choose_temperature(logits: np.ndarray, labels: np.ndarray, *, stored: float, stored_fitted_on: str,
                       enabled: bool = True, min_images: int = 50, min_per_class: int = 15,
                       bounds: tuple[float, float] = TEMPERATURE_BOUNDS, min_temperature: float = 0.0,
                       folds: int = TEMPERATURE_FOLDS, seed: int = 0) -> dict[str, Any]:
    """Refit the temperature on a site's labelled films when they support it; else keep the stored one.

    Kept (``source: "stored"``, the reason says why) when: temperature scaling is off; fewer than ``min_images``
    films or ``min_per_class`` of a class (``pneumoscan calibrate`` asks for :data:`TEMPERATURE_MIN_PER_CLASS`);
    the films are separated at logit 0 (no minimum); the fit ends at a bound of its search; or the gain does not
    survive cross-fitting: in ``folds`` stratified folds (``seed``), the temperature fitted on the other folds
    (not below ``min_temperature``) must give every held-out fold a lower NLL than ``stored``. A fit below
    ``min_temperature`` uses that floor, and the reason says so.

    Returns ``{"temperature", "source": "site" | "stored", "reason", "fitted_on", "fitted", "stored",
    "nll_stored", "nll_used", "cross_fitted"}``; ``cross_fitted`` holds the held-out NLL per fold of the refitted
    and of the stored temperature (mean nats per film), or None when no fit was tried.
    """
    y = np.asarray(labels, dtype=np.int64)
    z = np.asarray(logits, dtype=np.float64)
    n, n_pos = int(y.size), int(y.sum())
    fitted: float | None = None
    cross: dict[str, Any] | None = None
    keep = f"kept the stored temperature (fitted on {stored_fitted_on})"
    if not enabled:
        reason = f"temperature scaling is off in this model's config (eval.calibrate = false): {keep}"
    elif n < min_images or min(n_pos, n - n_pos) < min_per_class:
        reason = (f"only {n} films ({n_pos} PNEUMONIA, {n - n_pos} NORMAL); refitting needs {min_images} with "
                  f"{min_per_class} of each class: {keep}")
    elif np.all((2 * y - 1) * z > 0):
        reason = f"every film is on the right side of logit 0, so the likelihood has no minimum: {keep}"
    else:
        t = fit_temperature(z, y, bounds=bounds)
        fold = _folds(y, max(2, folds), seed)
        held_fit, held_stored = [], []
        for f in range(max(2, folds)):
            tr, te = fold != f, fold == f
            t_f = _fit(z[tr], y[tr], bounds, min_temperature)
            held_fit.append(binary_nll(y[te], z[te], t_f))
            held_stored.append(binary_nll(y[te], z[te], stored))
        cross = {"folds": len(held_fit), "seed": seed, "nll_refitted": held_fit, "nll_stored": held_stored,
                 "mean_gain": float(np.mean(held_stored) - np.mean(held_fit))}
        wins = sum(a < b for a, b in zip(held_fit, held_stored))
        if t <= bounds[0] * 1.01 or t >= bounds[1] / 1.01:
            reason = f"the fit ended at the bound {t:.3g} of its search (no interior optimum): {keep}"
        elif wins < len(held_fit):
            reason = (f"the fit ({max(t, min_temperature):.3f}) predicted held-out films better than the stored "
                      f"temperature in only {wins} of {len(held_fit)} cross-fitting folds (mean held-out NLL "
                      f"{np.mean(held_fit):.4f} against {np.mean(held_stored):.4f}): {keep}")
        elif t < min_temperature:
            fitted = float(min_temperature)
            reason = (f"fitted by likelihood on these {n} films at {t:.3f}, below the floor {min_temperature:g} "
                      "(a temperature that sharpens the logits claims more certainty than they carry): "
                      f"{min_temperature:g} used; better on held-out films in all {len(held_fit)} folds")
        else:
            fitted = t
            reason = (f"fitted by likelihood on these {n} films; better on held-out films in all {len(held_fit)} "
                      f"cross-fitting folds (mean NLL {np.mean(held_fit):.4f} against {np.mean(held_stored):.4f})")
    use = fitted if fitted is not None else float(stored)
    return {"temperature": use, "source": "site" if fitted is not None else "stored", "reason": reason,
            "fitted_on": "these films" if fitted is not None else stored_fitted_on, "fitted": fitted,
            "stored": float(stored), "nll_stored": binary_nll(y, z, stored), "nll_used": binary_nll(y, z, use),
            "cross_fitted": cross}


def carry_threshold(threshold: float, old_temperature: float, new_temperature: float) -> float:
    """The probability threshold at ``new_temperature`` that makes the same decisions as ``threshold`` at
    ``old_temperature`` (the same logit: ``sigmoid(logit(t) * T_old / T_new)``)."""
    t = min(1 - 1e-12, max(1e-12, float(threshold)))
    z = math.log(t / (1 - t)) * float(old_temperature) / float(new_temperature)
    return 1.0 / (1.0 + math.exp(-z))


# --- threshold ----------------------------------------------------------------------------------------


def threshold_stats(y: np.ndarray, scores: np.ndarray, threshold: float, *, level: float = 0.95) -> dict[str, Any]:
    """Sensitivity and specificity of ``score >= threshold`` on labelled films, with counts and exact
    (Clopper-Pearson) intervals; ``false_alarm_rate`` is ``1 - specificity``."""
    y = np.asarray(y, dtype=np.int64)
    pos = np.asarray(scores, dtype=np.float64) >= threshold
    tp, n_pos = int((pos & (y == 1)).sum()), int((y == 1).sum())
    tn, n_neg = int((~pos & (y == 0)).sum()), int((y == 0).sum())
    sens = tp / n_pos if n_pos else math.nan
    spec = tn / n_neg if n_neg else math.nan
    return {"threshold": float(threshold), "sensitivity": sens, "sensitivity_k": tp, "n_pneumonia": n_pos,
            "sensitivity_ci": exact_proportion_ci(tp, n_pos, level), "specificity": spec, "specificity_k": tn,
            "n_normal": n_neg, "specificity_ci": exact_proportion_ci(tn, n_neg, level),
            "false_alarm_rate": 1.0 - spec, "level": level}


def _lowest_under_ceiling(y: np.ndarray, s: np.ndarray, above: float, max_far: float) -> float | None:
    """The lowest threshold above ``above`` whose false-alarm rate on the normal films is at most ``max_far``
    (a film's score or, past the highest normal film, just above it); None when none is above ``above``."""
    neg = np.sort(s[y == 0])[::-1]
    allowed = int(math.floor(max_far * neg.size + 1e-9))
    if allowed >= neg.size:
        return None  # every threshold meets the ceiling
    t = float(np.nextafter(neg[allowed], np.inf))  # just above the (allowed + 1)-th highest normal film
    return t if t > above else None


def site_threshold(y: np.ndarray, scores: np.ndarray, current: float | None, *, target_sensitivity: float,
                   max_false_alarm_rate: float | None = None, miss_cost: float | None = None,
                   level: float = 0.95) -> dict[str, Any]:
    """The site rule (module docstring): keep ``current`` when its sensitivity on the films is compatible with the
    target, else move down; then, under a false-alarm ceiling, move up as far as the target sensitivity allows.

    ``scores``: the films' probabilities at the temperature that will be stored; ``current``: the model's threshold
    carried to that temperature (:func:`carry_threshold`), None for a model that has none.
    Returns ``{"threshold", "action": "kept" | "lowered" | "raised", "reasons": [...], "conflict": bool,
    "compatible": bool, "current": stats | None}`` (stats from :func:`threshold_stats`).
    """
    y = np.asarray(y, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    target = float(target_sensitivity)
    reasons: list[str] = []
    cur = None if current is None else threshold_stats(y, s, current, level=level)
    compatible = cur is not None and cur["sensitivity_ci"][1] >= target
    pct = f"{100 * level:g}%"
    if compatible:
        assert cur is not None
        threshold, action = float(current), "kept"  # type: ignore[arg-type]
        reasons.append(f"the current threshold finds {cur['sensitivity_k']} of {cur['n_pneumonia']} pneumonia films "
                       f"(sensitivity {cur['sensitivity']:.3f}, exact {pct} interval {cur['sensitivity_ci'][0]:.3f}-"
                       f"{cur['sensitivity_ci'][1]:.3f}): compatible with the target {target:g}, so it is kept")
    else:
        threshold = (threshold_min_cost(y, s, miss_cost=miss_cost, min_sensitivity=target) if miss_cost
                     else threshold_for_sensitivity(y, s, target))
        action = "lowered" if current is None or threshold < current else "raised"
        how = (f"the lowest-cost threshold (a miss weighs {miss_cost:g} false alarms) among those" if miss_cost
               else "the highest threshold")
        if cur is None:
            reasons.append(f"the model has no threshold: {how} reaching sensitivity {target:g} on these films")
        else:
            reasons.append(f"the current threshold finds only {cur['sensitivity_k']} of {cur['n_pneumonia']} "
                           f"pneumonia films (exact {pct} interval {cur['sensitivity_ci'][0]:.3f}-"
                           f"{cur['sensitivity_ci'][1]:.3f}, below the target {target:g}): moved to {how} "
                           f"reaching sensitivity {target:g} on these films")
    conflict = False
    if max_false_alarm_rate is not None:
        far = threshold_stats(y, s, threshold, level=level)["false_alarm_rate"]
        if far > max_false_alarm_rate:
            up = _lowest_under_ceiling(y, s, threshold, max_false_alarm_rate)
            ok = up is not None and threshold_stats(y, s, up, level=level)["sensitivity"] >= target
            if ok:
                assert up is not None
                reasons.append(f"its false-alarm rate on the normal films ({far:.3f}) is above the ceiling "
                               f"{max_false_alarm_rate:g}: raised to the lowest threshold under it, where the films' "
                               f"sensitivity still reaches {target:g}")
                threshold, action = up, "raised"
            else:
                conflict = True
                reasons.append(f"the false-alarm ceiling {max_false_alarm_rate:g} and the target sensitivity "
                               f"{target:g} cannot both be met on these films (false-alarm rate {far:.3f} at this "
                               "threshold): sensitivity comes first, the threshold stays")
    return {"threshold": float(threshold), "action": action, "reasons": reasons, "conflict": conflict,
            "compatible": bool(compatible), "current": cur, "target_sensitivity": target,
            "max_false_alarm_rate": max_false_alarm_rate, "level": level,
            "rule": "keep the current threshold when the upper end of its exact interval of sensitivity reaches the "
                    "target; else the highest threshold reaching it on the films; then, under a false-alarm "
                    "ceiling, the lowest threshold under it whose sensitivity on the films still reaches the target"}


def threshold_curve(y: np.ndarray, scores: np.ndarray, marked: dict[str, float | None], *,
                    level: float = 0.95) -> list[dict[str, Any]]:
    """The films' sensitivity/specificity curve for people: a row (:func:`threshold_stats`, plus ``"marks"``) at
    each ``marked`` threshold (e.g. current, proposed) and at the highest threshold reaching each of
    :data:`CURVE_SENSITIVITIES` on the films; rows sorted from the highest threshold down, duplicates merged."""
    y = np.asarray(y, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    rows: dict[float, list[str]] = {}
    for name, t in marked.items():
        if t is not None:
            rows.setdefault(float(t), []).append(name)
    if y.sum():
        for target in CURVE_SENSITIVITIES:
            rows.setdefault(threshold_for_sensitivity(y, s, target), [])
    return [{**threshold_stats(y, s, t, level=level), "marks": marks}
            for t, marks in sorted(rows.items(), key=lambda kv: -kv[0])]
