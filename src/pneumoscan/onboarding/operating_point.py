"""The operating point: the temperature and the decision threshold, chosen on labelled images.

Words, used one way each across the code:

* *temperature scaling*: fitting the temperature ``T`` of ``sigmoid(logit / T)`` by likelihood
  (:func:`pneumoscan.metrics.fit_temperature`; config key ``eval.calibrate`` turns it on);
* *operating point*: the threshold (sensitivity first) and the temperature, chosen together on validation at the
  end of training (:func:`choose_operating_point`), stored in the checkpoint;
* *re-choosing the operating point* on a site's own labelled films (:func:`rechoose_operating_point`, the
  ``pneumoscan calibrate`` command): it refuses the model's own training films (by content), needs
  :data:`MIN_IMAGES` films with :data:`MIN_PER_CLASS` of each class, fits the temperature on the site's films when
  they can tell it (:func:`choose_temperature`), and estimates what the chosen rule will do on new films by
  cross-fitting (:func:`cross_fitted_operating_point`). It writes a new checkpoint with the same weights.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pneumoscan.checkpoint import FALLBACK_THRESHOLD, Checkpoint, load_checkpoint, save_checkpoint
from pneumoscan.config import EvalConfig
from pneumoscan.constants import DEFAULT_CACHE_DIR
from pneumoscan.data import DatasetError, Record, index_dataset, split_overlap
from pneumoscan.metrics import (
    apply_temperature,
    binary_nll,
    brier,
    ece,
    fit_temperature,
    sensitivity,
    specificity,
    summarize_scores,
    threshold_min_cost,
    youden_threshold,
)
from pneumoscan.inference.scoring import resolve_device, score_dataset
from pneumoscan.onboarding.site_threshold import (
    TEMPERATURE_BOUNDS,
    TEMPERATURE_MIN_PER_CLASS,
    carry_threshold,
    choose_temperature,
    site_threshold,
    threshold_curve,
    threshold_stats,
)
from pneumoscan.onboarding.trainset import TENSOR_PREFIX, hash_files
from pneumoscan.onboarding.trainset import overlap as content_overlap
from pneumoscan.utils import file_sha256

__all__ = ["CALIBRATION_TENSOR", "MIN_IMAGES", "MIN_PER_CLASS", "TEMPERATURE_BOUNDS", "check_enough_films", "choose_operating_point",
           "choose_temperature", "cross_fitted_operating_point", "rechoose_operating_point", "training_overlap"]

log = logging.getLogger(__name__)

#: The fewest labelled films ``calibrate`` accepts, and the fewest of each class among them. Below these a
#: threshold chosen for 95% sensitivity rests on a handful of pneumonia films, and its cross-fitted halves on fewer.
MIN_IMAGES = 50
MIN_PER_CLASS = 15
#: The checkpoint tensor holding the content hashes of the site films ``calibrate`` chose the threshold on.
CALIBRATION_TENSOR = TENSOR_PREFIX + "calibration"
#: How the cross-fitted intervals are made, in words (printed and stored).
CROSS_FIT_METHOD = ("cross-fitted: the threshold chosen by the same rule on a random half of the patients "
                    "(stratified by label) and measured on the other half, repeated; value = mean over the repeats, "
                    "interval = 2.5th-97.5th percentiles of the repeats")


# --- checks on the labelled films -------------------------------------------------------------------


def check_enough_films(labels: Sequence[int] | np.ndarray, *, what: str = "calibrate",
                       min_images: int = MIN_IMAGES, min_per_class: int = MIN_PER_CLASS) -> None:
    """Raise :class:`DatasetError` (with the counts and the reason) unless there are at least ``min_images``
    labelled films with at least ``min_per_class`` of each class."""
    y = np.asarray(labels, dtype=np.int64)
    n, n_pos = int(y.size), int(y.sum())
    n_neg = n - n_pos
    if n >= min_images and min(n_pos, n_neg) >= min_per_class:
        return
    short = ([f"fewer than {min_images} films"] if n < min_images else []) + \
        [f"fewer than {min_per_class} {name} films" for name, k in (("PNEUMONIA", n_pos), ("NORMAL", n_neg))
         if k < min_per_class]
    raise DatasetError(
        f"{what} needs at least {min_images} labelled films with at least {min_per_class} of each class; got {n} "
        f"({n_pos} PNEUMONIA, {n_neg} NORMAL): {' and '.join(short)}. A threshold's sensitivity rests on the "
        "PNEUMONIA films and its specificity on the NORMAL ones; with fewer, the threshold and what it will do on "
        "new films are too uncertain to use. Add labelled films from this site.")


def training_overlap(ckpt: Checkpoint, records: Sequence[Record], *, hashes: Sequence[int | None] | None = None,
                     workers: int = 2) -> dict[str, Any]:
    """Which of ``records`` the model trained on, or chose its epoch, threshold and temperature on.

    Two sources, both used when present: the content hashes of its training and validation films stored in the
    checkpoint (:mod:`pneumoscan.onboarding.trainset`; renamed or copied files are caught), and the ``split.csv`` of its
    run folder (paths). ``hashes`` (:func:`pneumoscan.onboarding.trainset.hash_files` of the records, in order) are computed
    here when not given and the checkpoint carries hashes.

    A model written by ``pneumoscan calibrate`` also carries the hashes of the site films its threshold was chosen
    on (:data:`CALIBRATION_TENSOR`): ``n_calibration`` counts those among ``records``.

    Returns ``{"checked", "by_content", "by_split_csv", "n_images", "n_train", "n_val", "n_calibration",
    "train_examples", "val_examples", "calibration_examples"}``: ``n_train``/``n_val`` are the larger count of the
    two sources (each is a lower bound); ``by_content``/``by_split_csv`` hold each source's counts, or None when that
    source is absent; the examples are up to 10 paths found by content.
    """
    out: dict[str, Any] = {"checked": False, "by_content": None, "by_split_csv": None, "n_images": len(records),
                           "n_train": 0, "n_val": 0, "n_calibration": 0, "train_examples": [], "val_examples": [],
                           "calibration_examples": []}
    if any(name.startswith(TENSOR_PREFIX) for name in ckpt.extra):
        if hashes is None:
            hashes = hash_files([r.path for r in records], workers=workers)
        ov = content_overlap(ckpt, hashes)
        if ov.known:
            d = ov.to_dict([r.path for r in records])
            out["by_content"] = {"n_train": d["n_train"], "n_val": d["n_val"],
                                 "n_unreadable": sum(h is None for h in hashes)}
            out["train_examples"], out["val_examples"] = d["train_examples"], d["val_examples"]
    if CALIBRATION_TENSOR in ckpt.extra:
        if hashes is None:
            hashes = hash_files([r.path for r in records], workers=workers)
        chosen_on = set(ckpt.extra[CALIBRATION_TENSOR].tolist())
        hits = [i for i, h in enumerate(hashes) if h is not None and h in chosen_on]
        out["n_calibration"] = len(hits)
        out["calibration_examples"] = [records[i].path for i in hits[:10]]
    by_csv = split_overlap(ckpt.path, records) if ckpt.path else {}
    if by_csv:
        out["by_split_csv"] = {"n_train": int(by_csv.get("train", 0)), "n_val": int(by_csv.get("val", 0))}
    sources = [s for s in (out["by_content"], out["by_split_csv"]) if s is not None]
    out["checked"] = bool(sources)
    out["n_train"] = max((s["n_train"] for s in sources), default=0)
    out["n_val"] = max((s["n_val"] for s in sources), default=0)
    return out


def training_overlap_text(ov: dict[str, Any], role: str) -> str:
    """``"N of the M images (by image content: a; by its run's split.csv: b; e.g. x, y)"`` for ``role`` train, val
    or calibration."""
    how = []
    if role == "calibration":
        how.append(f"by image content: {ov['n_calibration']}")
    elif ov["by_content"] is not None:
        how.append(f"by image content: {ov['by_content'][f'n_{role}']}")
    if ov["by_split_csv"] is not None and role != "calibration":
        how.append(f"by its run's split.csv: {ov['by_split_csv'][f'n_{role}']}")
    examples = [Path(p).name for p in ov[f"{role}_examples"][:3]]
    if examples:
        how.append("e.g. " + ", ".join(examples))
    return f"{ov[f'n_{role}']} of the {ov['n_images']} images ({'; '.join(how)})"


# --- temperature, threshold, cross-fitting ------------------------------------------------------------


def _patient_halves(labels: np.ndarray, groups: Sequence[str] | None, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of the images of a random half of the patients, stratified by the patient's label (a patient
    with any pneumonia film counts as pneumonia)."""
    gid = np.arange(labels.size) if groups is None else np.unique(np.asarray(groups, dtype=object).astype(str),
                                                                  return_inverse=True)[1]
    patient_label = np.zeros(gid.max() + 1, dtype=np.int64)
    np.maximum.at(patient_label, gid, labels)
    chosen = np.zeros(patient_label.size, dtype=bool)
    for cls in (0, 1):
        members = rng.permutation(np.flatnonzero(patient_label == cls))
        half = members.size // 2 + int(members.size % 2 == 1 and rng.random() < 0.5)  # odd: the extra one at random
        chosen[members[:half]] = True
    return chosen[gid]


def cross_fitted_operating_point(labels: np.ndarray, scores: np.ndarray, groups: Sequence[str] | None = None, *,
                                 target_sensitivity: float, miss_cost: float, n_repeats: int = 200, seed: int = 0,
                                 level: float = 0.95,
                                 rule: Callable[[np.ndarray, np.ndarray], float] | None = None) -> dict[str, Any]:
    """What the operating RULE does on films it did not see: choose the threshold
    (:func:`~pneumoscan.metrics.threshold_min_cost`) on a random half of the patients, stratified by label,
    measure sensitivity and specificity on the other half; repeat ``n_repeats`` times (seeded).

    The numbers at a threshold measured on the films that chose it are optimistic; these are not (if anything
    slightly pessimistic: each threshold is chosen on half the films). The temperature needs no refit per half:
    it is monotone, so it never changes which films a chosen threshold separates.

    ``rule(labels, scores) -> threshold``: the rule to cross-fit instead (``pneumoscan calibrate``'s site rule).

    Returns ``{"method", "n_repeats", "n_skipped", "seed", "level", "target_sensitivity", "miss_cost", "n_images",
    "sensitivity", "specificity", "threshold"}``; each metric is ``{"value": mean, "median", "ci": [lo, hi]}``
    with ``ci`` the (1 - level)/2 and (1 + level)/2 percentiles of the repeats (a spread, not a bootstrap CI).
    """
    y = np.asarray(labels, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    rng = np.random.default_rng(seed)
    sens, spec, ths = [], [], []
    skipped = 0
    for _ in range(n_repeats):
        a = _patient_halves(y, groups, rng)
        b = ~a
        if min(y[a].sum(), y[b].sum(), (1 - y[b]).sum()) == 0:
            skipped += 1  # a half without pneumonia cannot choose, one without either class cannot measure
            continue
        th = (rule(y[a], s[a]) if rule is not None else
              threshold_min_cost(y[a], s[a], miss_cost=miss_cost, min_sensitivity=target_sensitivity))
        sens.append(sensitivity(y[b], s[b], th))
        spec.append(specificity(y[b], s[b], th))
        ths.append(th)
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2

    def q(v: list[float]) -> dict[str, Any]:
        if not v:
            return {"value": math.nan, "median": math.nan, "ci": [math.nan, math.nan]}
        return {"value": float(np.mean(v)), "median": float(np.median(v)),
                "ci": [float(np.percentile(v, lo)), float(np.percentile(v, hi))]}

    return {"method": CROSS_FIT_METHOD, "n_repeats": len(sens), "n_skipped": skipped, "seed": seed, "level": level,
            "target_sensitivity": float(target_sensitivity), "miss_cost": float(miss_cost), "n_images": int(y.size),
            "sensitivity": q(sens), "specificity": q(spec), "threshold": q(ths)}


def choose_operating_point(records: Sequence[Record], logits: np.ndarray, eval_cfg: EvalConfig, *,
                           temperature: float | None = None, fitted_on: str = "validation",
                           threshold: float | None = None, method: str | None = None
                           ) -> tuple[dict[str, Any], np.ndarray]:
    """Fit the temperature and choose the thresholds on labelled logits (validation at the end of training).

    ``temperature`` given: use it instead of fitting one (``fitted_on`` says where it came from). ``threshold``
    given: use it (chosen by the caller's rule, named ``method``) instead of choosing one.
    Returns ``(meta, probs)``: ``meta`` holds ``operating_point``, ``calibration`` and ``val_summary``
    for the checkpoint metadata; ``probs`` are the calibrated probabilities. The operating
    threshold is, among those whose sensitivity on these images reaches ``eval_cfg.target_sensitivity``, the one
    with the lowest cost ``miss_cost * FN + FP`` (sensitivity first: a missed pneumonia weighs
    ``eval_cfg.miss_cost`` false alarms; ties go to the higher threshold); it falls back to 0.5 (and says so in
    ``method``) when there is no pneumonia case.
    """
    y = np.array([r.label for r in records], dtype=np.int64)
    logits = np.asarray(logits, dtype=np.float64)
    floor = float(eval_cfg.min_temperature)
    t_likelihood: float | None = None
    if temperature is not None:
        t_fit, method_t = float(temperature), "temperature scaling (NLL)"
    elif eval_cfg.calibrate:
        t_likelihood = fit_temperature(logits, y)
        t_fit = max(floor, t_likelihood)
        method_t = f"temperature scaling (NLL), not below {floor:g}"
        if t_likelihood < floor:
            log.info("the temperature fitted on %s (%.3f) sharpens the scores; the floor %g is used", fitted_on,
                     t_likelihood, floor)
    else:
        t_fit, method_t = 1.0, "none"
    raw, probs = apply_temperature(logits, 1.0), apply_temperature(logits, t_fit)
    calibration = {"temperature": t_fit, "fitted_on": fitted_on, "method": method_t,
                   "fitted_by_likelihood": t_likelihood, "min_temperature": floor,
                   "n_images": int(y.size), "n_pneumonia": int(y.sum()),
                   "val_ece_before": ece(y, raw), "val_ece_after": ece(y, probs),
                   "val_brier_before": brier(y, raw), "val_brier_after": brier(y, probs),
                   "val_nll_before": binary_nll(y, logits), "val_nll_after": binary_nll(y, logits, t_fit)}
    target, miss_cost = float(eval_cfg.target_sensitivity), float(eval_cfg.miss_cost)
    try:
        if threshold is None:
            threshold = threshold_min_cost(y, probs, miss_cost=miss_cost, min_sensitivity=target)
            method = "min_cost_at_target_sensitivity"
        method = method or "given"
    except ValueError as exc:
        log.warning("cannot choose the operating threshold on validation (%s): using %g", exc, FALLBACK_THRESHOLD)
        threshold, method = FALLBACK_THRESHOLD, "fallback_0.5"
    try:
        youden: float | None = youden_threshold(y, probs)
    except ValueError:
        youden = None
    summary = summarize_scores(y, probs, {"operating": threshold, "fixed_0.5": 0.5, "youden": youden},
                               groups=[r.patient_id for r in records], causes=[r.cause for r in records],
                               n_resamples=eval_cfg.bootstrap_samples, seed=eval_cfg.bootstrap_seed)
    op = summary["thresholds"]["operating"]["metrics"]
    operating = {"threshold": threshold, "method": method, "target_sensitivity": target, "miss_cost": miss_cost,
                 "val_sensitivity": op["sensitivity"]["value"], "val_specificity": op["specificity"]["value"],
                 "youden_threshold": youden, "n_val_images": int(y.size), "chosen_on": "validation"}
    return {"operating_point": operating, "calibration": calibration, "val_summary": summary}, probs


# --- pneumoscan calibrate ----------------------------------------------------------------------------


def _eval_config(ckpt: Checkpoint, target_sensitivity: float | None, miss_cost: float | None) -> EvalConfig:
    known = {f.name for f in dataclasses.fields(EvalConfig)}
    raw = {k: v for k, v in ((ckpt.meta.get("config") or {}).get("eval") or {}).items() if k in known}
    if target_sensitivity is not None:
        raw["target_sensitivity"] = float(target_sensitivity)
    if miss_cost is not None:
        raw["miss_cost"] = float(miss_cost)
    return EvalConfig(**raw)


def _refuse_training_films(ckpt: Checkpoint, records: Sequence[Record], data: str,
                           hashes: Sequence[int | None]) -> dict[str, Any]:
    """The overlap of ``records`` with the model's own films; raises when any is a training film."""
    ov = training_overlap(ckpt, records, hashes=hashes)
    if ov["n_train"]:
        raise DatasetError(
            f"{data}: {training_overlap_text(ov, 'train')} were used to TRAIN {ckpt.path}. A model scores its own "
            "training films almost perfectly, so a threshold chosen on them would be wrong for new patients. "
            "Remove them and calibrate on films the model has never seen.")
    if not ov["checked"]:
        log.warning("%s carries no list of its training films and has no split.csv beside it: pneumoscan cannot "
                    "check that these films were not used to train it", ckpt.path)
    return ov


def rechoose_operating_point(checkpoint: str | os.PathLike[str], data: str | os.PathLike[str], out: str | os.PathLike[str], *,
                             split: str | None = None, target_sensitivity: float | None = None,
                             miss_cost: float | None = None, max_false_alarm_rate: float | None = None,
                             dry_run: bool = False, cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR,
                             device: str = "auto", batch_size: int = 64, num_workers: int = 2, progress: bool = False,
                             n_repeats: int = 200, seed: int = 0) -> dict[str, Any]:
    """Calibrate a model to a site on its labelled films, moving the operating point only as far as the films show
    is needed (:mod:`pneumoscan.onboarding.site_threshold`), and write a new checkpoint with the same weights (and
    the same extra tensors: reference, trainset), unless ``dry_run``.

    Refuses (:class:`DatasetError`, with the counts and examples): films the model trained on (by content, and by
    its run's ``split.csv`` when there is one); fewer than :data:`MIN_IMAGES` films or :data:`MIN_PER_CLASS` of a
    class. Films of its validation set are allowed and counted. The temperature is refitted only with
    :data:`~pneumoscan.onboarding.site_threshold.TEMPERATURE_MIN_PER_CLASS` films of each class and a gain that
    survives cross-fitting; the current threshold is carried to it at the same logit, kept when its sensitivity on
    the films is compatible with the target (``target_sensitivity``, default the checkpoint's), else moved to the
    highest threshold reaching it (``miss_cost`` given: the lowest-cost one among those), then raised under
    ``max_false_alarm_rate`` where the target still holds. What the rule will do on new films is estimated by
    cross-fitting (:func:`cross_fitted_operating_point`, ``n_repeats`` times, ``seed``). Works on an adapted model.

    The content hashes of the films go into the checkpoint as :data:`CALIBRATION_TENSOR` (``evaluate`` warns
    when shown them). The summary goes into the checkpoint as ``site_calibration``, and ``site_state`` becomes
    ``"calibrated"`` or ``"adapted and calibrated"``. Returns ``{"before", "after", "calibration",
    "site_calibration", "trade", "written", "n_images", "failures", "overlap"}``; ``trade`` holds the films'
    curve and the current and proposed thresholds (:func:`~pneumoscan.onboarding.site_threshold.threshold_curve`).
    """
    src, dst = Path(checkpoint), Path(out)
    if dst.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"{dst}: write the recalibrated checkpoint to a new file, not over its source")
    if not dry_run and dst.exists():
        raise ValueError(f"{dst} already exists; calibrate writes a new checkpoint and never replaces a file")
    if max_false_alarm_rate is not None and not 0.0 <= max_false_alarm_rate < 1.0:
        raise ValueError(f"the maximum false-alarm rate must be in [0, 1), got {max_false_alarm_rate}")
    source = f"{data}" + (f" (split {split})" if split else "")
    index = index_dataset(data, split=split, check=False)
    ckpt = load_checkpoint(src)
    hashes = hash_files([r.path for r in index.records], workers=max(1, num_workers))
    ov = _refuse_training_films(ckpt, index.records, source, hashes)  # first: the graver problem
    check_enough_films([r.label for r in index.records])
    records, scored, failures = score_dataset([src], list(index.records), Path(cache_dir), resolve_device(device),
                                              batch_size, num_workers, progress)
    check_enough_films([r.label for r in records])  # again: some films may not have decoded
    ckpt = scored[0].checkpoint
    y = np.array([r.label for r in records], dtype=np.int64)
    ecfg = _eval_config(ckpt, target_sensitivity, miss_cost)
    stored_cal = ckpt.info.calibration
    temp = choose_temperature(scored[0].logits, y, stored=ckpt.info.temperature,
                              stored_fitted_on=str(stored_cal.get("fitted_on") or "the model's validation split"),
                              enabled=ecfg.calibrate, min_temperature=ecfg.min_temperature,
                              min_per_class=TEMPERATURE_MIN_PER_CLASS, seed=seed)
    before = ckpt.meta.get("operating_point")
    has_threshold = bool(before) and before.get("threshold") is not None
    current = (carry_threshold(float(ckpt.info.threshold), ckpt.info.temperature, temp["temperature"])
               if has_threshold else None)
    probs_used = apply_temperature(scored[0].logits, temp["temperature"])
    target = float(ecfg.target_sensitivity)
    chosen = site_threshold(y, probs_used, current, target_sensitivity=target,
                            max_false_alarm_rate=max_false_alarm_rate, miss_cost=miss_cost)
    extra, probs = choose_operating_point(records, scored[0].logits, ecfg, temperature=temp["temperature"],
                                          fitted_on=source if temp["source"] == "site" else temp["fitted_on"],
                                          threshold=chosen["threshold"], method=f"site rule: {chosen['action']}")
    extra["calibration"].update({"source": temp["source"], "reason": temp["reason"]})
    op = extra["operating_point"]
    op["chosen_on"] = source
    op["miss_cost"] = float(miss_cost or 0.0)
    groups = [r.patient_id for r in records]

    def rule(yy: np.ndarray, ss: np.ndarray) -> float:
        return site_threshold(yy, ss, current, target_sensitivity=target, max_false_alarm_rate=max_false_alarm_rate,
                              miss_cost=miss_cost)["threshold"]

    cross = cross_fitted_operating_point(y, probs, groups, target_sensitivity=target, miss_cost=op["miss_cost"],
                                         n_repeats=n_repeats, seed=seed, rule=rule)
    cross["method"] = cross["method"].replace("the threshold chosen by the same rule",
                                              "the threshold chosen by the site rule (keep or move)")
    trade = {"current": None if current is None else threshold_stats(y, probs, current),
             "proposed": threshold_stats(y, probs, chosen["threshold"]),
             "current_threshold_stored": None if not has_threshold else float(ckpt.info.threshold),
             "curve": threshold_curve(y, probs, {"current": current, "proposed": chosen["threshold"]}),
             "action": chosen["action"], "reasons": chosen["reasons"], "conflict": chosen["conflict"],
             "rule": chosen["rule"], "target_sensitivity": target, "max_false_alarm_rate": max_false_alarm_rate,
             "temperature_before": float(ckpt.info.temperature), "temperature_after": temp["temperature"]}
    adapted = "adaptation" in ckpt.meta
    site = {
        "threshold": op["threshold"], "method": op["method"], "action": chosen["action"],
        "reasons": chosen["reasons"], "conflict": chosen["conflict"], "compatible": chosen["compatible"],
        "target_sensitivity": target, "max_false_alarm_rate": max_false_alarm_rate, "miss_cost": op["miss_cost"],
        "temperature": temp["temperature"], "temperature_source": temp["source"],
        "temperature_fitted_on": source if temp["source"] == "site" else temp["fitted_on"],
        "temperature_reason": temp["reason"], "stored_temperature": temp["stored"],
        "temperature_cross_fitted": temp["cross_fitted"], "temperature_min_per_class": TEMPERATURE_MIN_PER_CLASS,
        "cross_fitted": cross,
        "on_these_films": {"sensitivity": op["val_sensitivity"], "specificity": op["val_specificity"],
                           "current": trade["current"], "proposed": trade["proposed"],
                           "note": "measured on the films that chose the threshold: optimistic"},
        "ece_before": ece(y, scored[0].probs), "ece_after": ece(y, probs),
        "n_images": int(y.size), "n_pneumonia": int(y.sum()), "n_normal": int(y.size - y.sum()),
        "n_patients": len(set(groups)), "n_skipped": len(index.skipped) + len(failures),
        "n_in_validation_set": ov["n_val"], "training_films_checked": ov["checked"],
        "data": source, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "parent_sha256": file_sha256(src), "parent": str(src), "adapted": adapted,
        "previous_operating_point": before,
    }
    if not dry_run:
        config = dict(ckpt.meta.get("config") or {})
        config["eval"] = {**dataclasses.asdict(ecfg), "miss_cost": op["miss_cost"]}
        meta = {**ckpt.meta, **extra, "config": config, "site_calibration": site,
                "site_state": "adapted and calibrated" if adapted else "calibrated"}
        # The films that chose the threshold, by content, so that `evaluate` can say when it is shown them again.
        hash_of = dict(zip((r.path for r in index.records), hashes))
        chosen_on = sorted({h for r in records if (h := hash_of.get(r.path)) is not None})
        save_checkpoint(dst, ckpt.state_dict, meta,
                        extra={**ckpt.extra, CALIBRATION_TENSOR: torch.tensor(chosen_on, dtype=torch.int64)})
    return {"before": before, "after": op, "calibration": extra["calibration"], "site_calibration": site,
            "trade": trade, "written": not dry_run, "n_images": len(records), "failures": failures, "overlap": ov}
