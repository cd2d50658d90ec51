"""Evaluate one or more checkpoints on a labelled folder or CSV manifest: metrics with patient-bootstrap
confidence intervals, calibration, subgroups, a paired comparison, and one self-contained HTML report.

The same :func:`summarize_scores` produces the validation summary stored in every checkpoint at the
end of training (:func:`validation_summary`, called by ``train``) and the summary of an evaluation,
so the two are comparable number for number.

Outputs of :func:`evaluate` in ``out_dir`` (written atomically): ``metrics.json``, ``report.html``,
the plots as PNG files, and ``scores.csv`` (one row per image).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pneumoscan import __version__
from pneumoscan import metrics as M
from pneumoscan.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from pneumoscan.config import EvalConfig
from pneumoscan.data import CLASS_NAMES, DatasetError, Record, build_cache, index_dataset
from pneumoscan.models import Preprocessing
from pneumoscan.utils import atomic_write_text, csv_safe_text

__all__ = ["ScoredModel", "evaluate", "recalibrate", "summarize_scores", "validation_summary", "write_scores_csv"]

log = logging.getLogger(__name__)

#: Names of the thresholds every summary reports, in display order.
THRESHOLD_NAMES = ("operating", "fixed_0.5", "youden")
_KERMANY_NAME = re.compile(r"^(person\d+_(bacteria|virus)_\d+|(NORMAL2-)?IM-\d+(-\d+)+)$", re.IGNORECASE)


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
    ci = M.bootstrap_ci(y, probs, ths, groups=groups, **kw)
    out: dict[str, Any] = {
        "n_images": int(y.size), "n_positive": int(y.sum()), "n_negative": int(y.size - y.sum()),
        "n_patients": len(set(groups)) if groups is not None else int(y.size),
        "prevalence": float(y.mean()) if y.size else math.nan,
        "roc_auc": _value_ci(M.roc_auc(y, probs), ci["roc_auc"]),
        "pr_auc": _value_ci(M.pr_auc(y, probs), ci["pr_auc"]),
        "brier": _value_ci(M.brier(y, probs), ci["brier"]),
        "ece": M.ece(y, probs),
        "thresholds": {},
        "bootstrap": {k: ci[k] for k in ("n_resamples", "n_groups", "level", "seed", "method")},
    }
    for name, t in ths.items():
        tm = M.threshold_metrics(y, probs, t)
        out["thresholds"][name] = {
            "threshold": t, "confusion": {k: int(tm[k]) for k in ("tp", "fp", "tn", "fn")},
            "metrics": {m: _value_ci(tm[m], ci["thresholds"][name][m]) for m in M.THRESHOLD_METRICS},
        }
    out["subgroups"] = {"cause": {}}
    if causes is not None:
        cause_arr = np.array([c or "" for c in causes], dtype=object)
        for cause in ("bacteria", "virus"):
            sel = np.flatnonzero((cause_arr == cause) & (y == 1))
            if sel.size == 0:
                continue
            sub_groups = [groups[i] for i in sel] if groups is not None else None
            sub = M.bootstrap_ci(y[sel], probs[sel], ths, groups=sub_groups, **kw)
            out["subgroups"]["cause"][cause] = {
                "n_images": int(sel.size), "n_patients": len(set(sub_groups)) if sub_groups else int(sel.size),
                "sensitivity": {name: _value_ci(M.sensitivity(y[sel], probs[sel], t),
                                                sub["thresholds"][name]["sensitivity"]) for name, t in ths.items()},
            }
    return out


def validation_summary(records: Sequence[Record], logits: np.ndarray, eval_cfg: EvalConfig) -> tuple[dict[str, Any], np.ndarray]:
    """Fit the temperature and choose the thresholds on VALIDATION logits (end of training).

    Returns ``(meta, probs)``: ``meta`` holds ``operating_point``, ``calibration`` and ``val_summary``
    for the checkpoint metadata; ``probs`` are the calibrated validation probabilities. The operating
    threshold is, among those whose validation sensitivity reaches ``eval_cfg.target_sensitivity``, the one
    with the lowest validation cost ``miss_cost * FN + FP`` (sensitivity first: a missed pneumonia weighs
    ``eval_cfg.miss_cost`` false alarms; ties go to the higher threshold); it falls back to 0.5 (and says so in ``method``) when validation has no pneumonia case.
    """
    y = np.array([r.label for r in records], dtype=np.int64)
    logits = np.asarray(logits, dtype=np.float64)
    t_fit = M.fit_temperature(logits, y) if eval_cfg.calibrate else 1.0
    raw, probs = M.apply_temperature(logits, 1.0), M.apply_temperature(logits, t_fit)
    calibration = {"temperature": t_fit, "fitted_on": "validation", "method": "temperature scaling (NLL)" if eval_cfg.calibrate else "none",
                   "val_ece_before": M.ece(y, raw), "val_ece_after": M.ece(y, probs),
                   "val_brier_before": M.brier(y, raw), "val_brier_after": M.brier(y, probs),
                   "val_nll_before": M.binary_nll(y, logits), "val_nll_after": M.binary_nll(y, logits, t_fit)}
    target, miss_cost = float(eval_cfg.target_sensitivity), float(eval_cfg.miss_cost)
    try:
        threshold = M.threshold_min_cost(y, probs, miss_cost=miss_cost, min_sensitivity=target)
        method = "min_cost_at_target_sensitivity"
    except ValueError as exc:
        log.warning("cannot choose the operating threshold on validation (%s): using 0.5", exc)
        threshold, method = 0.5, "fallback_0.5"
    try:
        youden: float | None = M.youden_threshold(y, probs)
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


def write_scores_csv(path: str | os.PathLike[str], records: Sequence[Record], scores: np.ndarray) -> None:
    """Write ``path,label,patient_id,cause,score`` (score: pneumonia probability) atomically.

    For people and spreadsheets, not read back: text cells go through :func:`csv_safe_text`."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "label", "patient_id", "cause", "score"])
    for rec, s in zip(records, scores):
        writer.writerow([csv_safe_text(rec.path), CLASS_NAMES[rec.label], csv_safe_text(rec.patient_id),
                         rec.cause or "", f"{float(s):.6f}"])
    atomic_write_text(path, buf.getvalue())


# --- scoring checkpoints --------------------------------------------------------------------------------


@dataclass
class ScoredModel:
    """One checkpoint's scores on the evaluated images; arrays are aligned with the evaluation's records."""

    checkpoint: Checkpoint
    logits: np.ndarray  # (N,) raw logits, before temperature scaling
    probs: np.ndarray  # (N,) sigmoid(logits / T): the calibrated probabilities every metric uses
    probs_raw: np.ndarray  # (N,) sigmoid(logits)
    images: np.ndarray  # the cache's (M, S, S) uint8 memory map
    rows: np.ndarray  # (N,) row of each record in ``images``


def _device(pref: str) -> torch.device:
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(pref)


def _score_all(paths: Sequence[str | os.PathLike[str]], records: list[Record], cache_dir: Path, device: torch.device,
               batch_size: int, num_workers: int, progress: bool) -> tuple[list[Record], list[ScoredModel], list[tuple[str, str]]]:
    from pneumoscan.predict import model_from_checkpoint  # one way to rebuild a network from a checkpoint
    from pneumoscan.train import score_images

    ckpts = [load_checkpoint(p) for p in paths]
    caches = [build_cache(records, Preprocessing.from_dict(c.meta["preprocessing"]).image_size, cache_dir,
                          num_workers=num_workers, progress=progress) for c in ckpts]
    decoded = set.intersection(*[{r.path for r in c.records} for c in caches])
    kept = [r for r in records if r.path in decoded]  # every model sees the same images
    failures = sorted({f for c in caches for f in c.failures})
    scored = []
    for ckpt, cache in zip(ckpts, caches):
        row_of = {r.path: i for i, r in enumerate(cache.records)}
        rows = np.array([row_of[r.path] for r in kept], dtype=np.int64)
        model = model_from_checkpoint(ckpt).to(device)
        spec = Preprocessing.from_dict(ckpt.meta["preprocessing"])
        logits = score_images(model, cache.images, rows, spec, batch_size=batch_size, device=device, logits=True)
        scored.append(ScoredModel(ckpt, logits, M.apply_temperature(logits, ckpt.temperature),
                                  M.apply_temperature(logits, 1.0), cache.images, rows))
    return kept, scored, failures


# --- checks a reader needs ------------------------------------------------------------------------------


def _run_split_overlap(ckpt_path: str | None, records: Sequence[Record]) -> dict[str, int]:
    """How many evaluated images were in the checkpoint's training or validation split (from its run's split.csv)."""
    if not ckpt_path:
        return {}
    split_csv = Path(ckpt_path).parent / "split.csv"
    if not split_csv.is_file():
        return {}
    side: dict[str, str] = {}
    with open(split_csv, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            side[os.path.normpath(os.path.join(split_csv.parent, row.get("path", "")))] = row.get("split", "")
    sides = [side.get(os.path.normpath(r.path), "") for r in records]
    return {"train": sides.count("train"), "val": sides.count("val"), "n_images": len(records)}


def _metric(summary: Mapping[str, Any], name: str, metric: str) -> dict[str, Any] | None:
    return ((summary.get("thresholds") or {}).get(name) or {}).get("metrics", {}).get(metric)


def _drop_beyond_ci(val: Mapping[str, Any], ev: Mapping[str, Any]) -> bool:
    """True when the evaluated value is below the validation one by more than 1.96 combined standard errors.

    Each standard error is read off its 95% bootstrap interval as width / 3.92. A validation interval of
    zero width (e.g. 100% on few cases) leaves the evaluated interval alone to decide.
    """
    if not all(math.isfinite(x) for x in (val["value"], ev["value"], *val["ci"], *ev["ci"])):
        return False
    se = math.hypot((val["ci"][1] - val["ci"][0]) / 3.92, (ev["ci"][1] - ev["ci"][0]) / 3.92)
    return bool(val["value"] - ev["value"] > 1.96 * se)


def _model_warnings(entry: dict[str, Any]) -> list[str]:
    out = []
    if entry["operating_point_source"] != "checkpoint":
        out.append("This checkpoint carries no operating threshold chosen on validation (it was trained before "
                   "pneumoscan chose one), so 0.5 is used as the operating threshold. 0.5 was not chosen for "
                   "sensitivity and may miss more pneumonia than intended.")
    ov = entry.get("split_overlap") or {}
    if ov.get("train"):
        out.append(f"{ov['train']} of the {ov['n_images']} evaluated images were used to TRAIN this model: "
                   "these results say nothing about new patients.")
    if ov.get("val"):
        chosen = ("its threshold and temperature were chosen and its best epoch picked"
                  if entry["operating_point_source"] == "checkpoint" else "its best epoch was picked")
        out.append(f"{ov['val']} of the {ov['n_images']} evaluated images are this model's validation split, on "
                   f"which {chosen}: expect new data to do worse.")
    vc = entry.get("validation_comparison") or {}
    if vc.get("sensitivity_drop_beyond_ci"):
        out.append(f"Sensitivity at the operating threshold is {vc['evaluated']['value']:.1%} here (95% CI "
                   f"{vc['evaluated']['ci'][0]:.1%} to {vc['evaluated']['ci'][1]:.1%}) against "
                   f"{vc['validation']['value']:.1%} on validation. "
                   "The model misses more pneumonia on these images than on its validation data, by more than chance "
                   "explains. Check the images' source and preparation before relying on it.")
    s = entry["summary"]
    if min(s["n_positive"], s["n_negative"]) < 30:
        out.append(f"Only {s['n_positive']} pneumonia and {s['n_negative']} normal images: intervals are wide.")
    return out


def _looks_like_kermany(source: str, records: Sequence[Record]) -> bool:
    names = [Path(r.path).stem for r in records]
    matches = sum(bool(_KERMANY_NAME.match(n)) for n in names)
    return "chest_xray" in source.lower() or "chest_xray" in (records[0].path.lower() if records else "") or (
        bool(names) and matches >= 0.9 * len(names))


# --- the command ----------------------------------------------------------------------------------------


def evaluate(checkpoints: Sequence[str | os.PathLike[str]], data: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
             split: str | None = None, cache_dir: str | os.PathLike[str] = ".pneumoscan-cache",
             bootstrap_samples: int | None = None, bootstrap_seed: int | None = None, level: float = 0.95,
             device: str = "auto", batch_size: int = 64, num_workers: int = 2, progress: bool = False) -> dict[str, Any]:
    """Evaluate ``checkpoints`` on the labelled images of ``data`` (folder or CSV manifest, optional ``split``).

    Every model uses its own temperature and its own operating threshold from the checkpoint (0.5 when
    it has none; the report says so); nothing is chosen on the evaluated data. The first checkpoint is
    the reference of the comparison (DeLong's test and a paired patient bootstrap of the AUC difference).
    Bootstrap settings default to the first checkpoint's ``eval`` config (2,000 resamples, seed 0).

    Returns the dict written to ``out_dir/metrics.json``; ``report.html`` and PNG plots go beside it.
    """
    from pneumoscan.report import write_report

    if not checkpoints:
        raise ValueError("evaluate needs at least one checkpoint")
    t0 = time.perf_counter()
    out = Path(out_dir)
    index = index_dataset(data, split=split, check=False)
    records, scored, failures = _score_all(checkpoints, list(index.records), Path(cache_dir), _device(device),
                                           batch_size, num_workers, progress)
    if not records:
        raise ValueError(f"{data}: no image could be decoded for every model")
    ecfg = (scored[0].checkpoint.meta.get("config") or {}).get("eval") or {}
    n_boot = int(bootstrap_samples if bootstrap_samples is not None else ecfg.get("bootstrap_samples", 2000))
    seed = int(bootstrap_seed if bootstrap_seed is not None else ecfg.get("bootstrap_seed", 0))
    y = np.array([r.label for r in records], dtype=np.int64)
    groups, causes = [r.patient_id for r in records], [r.cause for r in records]
    models = []
    for i, sm in enumerate(scored):
        ck = sm.checkpoint
        op = ck.meta.get("operating_point") or {}
        ths = {"operating": ck.threshold, "fixed_0.5": 0.5, "youden": op.get("youden_threshold")}
        summary = summarize_scores(y, sm.probs, ths, groups=groups, causes=causes, n_resamples=n_boot, seed=seed, level=level)
        entry: dict[str, Any] = {
            "index": i + 1, "checkpoint": str(ck.path), "model": ck.model_name, "epoch": ck.meta.get("epoch"),
            "image_size": ck.meta["preprocessing"]["image_size"],
            "operating_point": op or None, "operating_point_source": "checkpoint" if "threshold" in op else "fallback_0.5",
            "calibration": {"temperature": ck.temperature, "fitted_on_validation": ck.meta.get("calibration"),
                            "ece_raw": M.ece(y, sm.probs_raw), "ece_calibrated": M.ece(y, sm.probs),
                            "brier_raw": M.brier(y, sm.probs_raw), "brier_calibrated": M.brier(y, sm.probs),
                            "nll_raw": M.binary_nll(y, sm.logits), "nll_calibrated": M.binary_nll(y, sm.logits, ck.temperature)},
            "summary": summary, "split_overlap": _run_split_overlap(ck.path, records),
        }
        val = ck.meta.get("val_summary")
        v, e = (_metric(val, "operating", "sensitivity") if val else None), _metric(summary, "operating", "sensitivity")
        if v and e:
            entry["validation_comparison"] = {
                "metric": "sensitivity at the operating threshold", "validation": v, "evaluated": e,
                "validation_specificity": _metric(val, "operating", "specificity"),
                "evaluated_specificity": _metric(summary, "operating", "specificity"),
                "sensitivity_drop_beyond_ci": _drop_beyond_ci(v, e),
            }
        entry["warnings"] = _model_warnings(entry)
        models.append(entry)
    comparison = []
    for i, sm in enumerate(scored[1:], start=2):
        try:
            dl = M.delong_test(y, scored[0].probs, sm.probs)
        except ValueError as exc:
            dl = {"error": str(exc)}
        comparison.append({"model": i, "reference": 1, "delong": dl,
                           "bootstrap_auc_difference": M.bootstrap_auc_difference(
                               y, scored[0].probs, sm.probs, groups=groups, n_resamples=n_boot, seed=seed, level=level)})
    result: dict[str, Any] = {
        "pneumoscan_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": {"source": str(data), "split": split, "n_images": len(records), "n_patients": len(set(groups)),
                 "n_positive": int(y.sum()), "n_negative": int(y.size - y.sum()),
                 "n_skipped": len(index.skipped) + len(failures),
                 "kermany": _looks_like_kermany(str(data), records)},
        "bootstrap": {"n_resamples": n_boot, "seed": seed, "level": level,
                      "method": "Percentile interval; patients resampled with replacement (cluster bootstrap)"},
        "models": models,
        "comparison": comparison,
        "warnings": [f"{len(failures)} image(s) could not be decoded and were left out."] if failures else [],
    }
    out.mkdir(parents=True, exist_ok=True)
    prefixes = [""] if len(scored) == 1 else [f"model{i}-" for i in range(1, len(scored) + 1)]
    result["outputs"] = write_report(result, scored, records, out, prefixes)
    for pre, sm in zip(prefixes, scored):
        write_scores_csv(out / f"{pre}scores.csv", records, sm.probs)
        result["outputs"][f"{pre}scores"] = f"{pre}scores.csv"
    result["seconds"] = round(time.perf_counter() - t0, 2)
    atomic_write_text(out / "metrics.json", json.dumps(_json_safe(result), indent=2, sort_keys=False) + "\n")
    return result


def recalibrate(checkpoint: str | os.PathLike[str], data: str | os.PathLike[str], out: str | os.PathLike[str], *,
                split: str | None = None, target_sensitivity: float | None = None, miss_cost: float | None = None,
                cache_dir: str | os.PathLike[str] = ".pneumoscan-cache", device: str = "auto", batch_size: int = 64,
                num_workers: int = 2, progress: bool = False) -> dict[str, Any]:
    """Fit the temperature and choose the operating threshold again, on labelled images, and write a new checkpoint.

    This is the end of training (:func:`validation_summary`) run again on other images or with another
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
    records, scored, failures = _score_all([src], list(index.records), Path(cache_dir), _device(device),
                                           batch_size, num_workers, progress)
    overlap = _run_split_overlap(str(src), records)
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
    extra, _ = validation_summary(records, scored[0].logits, ecfg)
    extra["operating_point"]["chosen_on"] = f"{data}" + (f" (split {split})" if split else "")
    config["eval"] = dataclasses.asdict(ecfg)
    before = ckpt.meta.get("operating_point")
    meta = {**ckpt.meta, **extra, "config": config,
            "recalibrated": {"from": str(src), "data": str(data), "split": split, "n_images": len(records),
                             "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "previous_operating_point": before}}
    save_checkpoint(dst, ckpt.state_dict, meta)
    return {"before": before, "after": extra["operating_point"], "calibration": extra["calibration"],
            "n_images": len(records), "failures": failures}


def _json_safe(obj: Any) -> Any:
    """NaN and infinity become null: strict JSON readers reject them."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj
