"""The operating point: the temperature and the decision threshold, chosen on labelled images.

Words, used one way each across the code:

* *temperature scaling*: fitting the temperature ``T`` of ``sigmoid(logit / T)`` by likelihood
  (:func:`pneumoscan.metrics.fit_temperature`; config key ``eval.calibrate`` turns it on);
* *operating point*: the threshold (sensitivity first) and the temperature, chosen together on validation at the
  end of training (:func:`choose_operating_point`), stored in the checkpoint;
* *re-choosing the operating point* on other labelled images, e.g. a site's own (:func:`rechoose_operating_point`,
  the ``pneumoscan calibrate`` command), which writes a new checkpoint with the same weights.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pneumoscan.checkpoint import FALLBACK_THRESHOLD, save_checkpoint
from pneumoscan.config import EvalConfig
from pneumoscan.constants import DEFAULT_CACHE_DIR
from pneumoscan.data import DatasetError, Record, index_dataset, split_overlap
from pneumoscan.metrics import (
    apply_temperature,
    binary_nll,
    brier,
    ece,
    fit_temperature,
    summarize_scores,
    threshold_min_cost,
    youden_threshold,
)
from pneumoscan.scoring import resolve_device, score_dataset

__all__ = ["choose_operating_point", "rechoose_operating_point"]

log = logging.getLogger(__name__)


def choose_operating_point(records: Sequence[Record], logits: np.ndarray, eval_cfg: EvalConfig) -> tuple[dict[str, Any], np.ndarray]:
    """Fit the temperature and choose the thresholds on VALIDATION logits (end of training).

    Returns ``(meta, probs)``: ``meta`` holds ``operating_point``, ``calibration`` and ``val_summary``
    for the checkpoint metadata; ``probs`` are the calibrated validation probabilities. The operating
    threshold is, among those whose validation sensitivity reaches ``eval_cfg.target_sensitivity``, the one
    with the lowest validation cost ``miss_cost * FN + FP`` (sensitivity first: a missed pneumonia weighs
    ``eval_cfg.miss_cost`` false alarms; ties go to the higher threshold); it falls back to 0.5 (and says so in ``method``) when validation has no pneumonia case.
    """
    y = np.array([r.label for r in records], dtype=np.int64)
    logits = np.asarray(logits, dtype=np.float64)
    t_fit = fit_temperature(logits, y) if eval_cfg.calibrate else 1.0
    raw, probs = apply_temperature(logits, 1.0), apply_temperature(logits, t_fit)
    calibration = {"temperature": t_fit, "fitted_on": "validation", "method": "temperature scaling (NLL)" if eval_cfg.calibrate else "none",
                   "val_ece_before": ece(y, raw), "val_ece_after": ece(y, probs),
                   "val_brier_before": brier(y, raw), "val_brier_after": brier(y, probs),
                   "val_nll_before": binary_nll(y, logits), "val_nll_after": binary_nll(y, logits, t_fit)}
    target, miss_cost = float(eval_cfg.target_sensitivity), float(eval_cfg.miss_cost)
    try:
        threshold = threshold_min_cost(y, probs, miss_cost=miss_cost, min_sensitivity=target)
        method = "min_cost_at_target_sensitivity"
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


def rechoose_operating_point(checkpoint: str | os.PathLike[str], data: str | os.PathLike[str], out: str | os.PathLike[str], *,
                split: str | None = None, target_sensitivity: float | None = None, miss_cost: float | None = None,
                cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR, device: str = "auto", batch_size: int = 64,
                num_workers: int = 2, progress: bool = False) -> dict[str, Any]:
    """Fit the temperature and choose the operating threshold again, on labelled images, and write a new checkpoint.

    This is the end of training (:func:`choose_operating_point`) run again on other images or with another
    policy: a site adapting the threshold to its own validation images, or a new ``target_sensitivity`` /
    ``miss_cost``. The weights are unchanged. Images used here choose the threshold, so they must not
    also be used to report performance. Images from the checkpoint's own training split are refused
    (their scores are optimistic).

    Returns ``{"before": operating_point, "after": operating_point, "calibration", "n_images", "failures"}``.
    """
    src, dst = Path(checkpoint), Path(out)
    if dst.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"{dst}: write the recalibrated checkpoint to a new file, not over its source")
    index = index_dataset(data, split=split, check=False)
    records, scored, failures = score_dataset([src], list(index.records), Path(cache_dir), resolve_device(device),
                                           batch_size, num_workers, progress)
    overlap = split_overlap(str(src), records)
    if overlap.get("train"):
        raise DatasetError(f"{data}: {overlap['train']} of these images were in {src}'s training split; "
                         "choose the threshold on images the model did not train on")
    ckpt = scored[0].checkpoint
    config = dict(ckpt.meta.get("config") or {})
    known = {f.name for f in dataclasses.fields(EvalConfig)}
    eval_raw = {k: v for k, v in (config.get("eval") or {}).items() if k in known}
    if target_sensitivity is not None:
        eval_raw["target_sensitivity"] = float(target_sensitivity)
    if miss_cost is not None:
        eval_raw["miss_cost"] = float(miss_cost)
    ecfg = EvalConfig(**eval_raw)
    extra, _ = choose_operating_point(records, scored[0].logits, ecfg)
    extra["operating_point"]["chosen_on"] = f"{data}" + (f" (split {split})" if split else "")
    config["eval"] = dataclasses.asdict(ecfg)
    before = ckpt.meta.get("operating_point")
    meta = {**ckpt.meta, **extra, "config": config,
            "recalibrated": {"from": str(src), "data": str(data), "split": split, "n_images": len(records),
                             "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "previous_operating_point": before}}
    save_checkpoint(dst, ckpt.state_dict, meta)
    return {"before": before, "after": extra["operating_point"], "calibration": extra["calibration"],
            "n_images": len(records), "failures": failures}
