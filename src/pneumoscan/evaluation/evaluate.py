"""Evaluate one or more checkpoints on a labelled folder or CSV manifest: metrics with patient-bootstrap
confidence intervals, calibration, subgroups, a paired comparison, and one self-contained HTML report.

The same :func:`pneumoscan.metrics.summarize_scores` produces the validation summary stored in every checkpoint
at the end of training (:func:`pneumoscan.onboarding.operating_point.choose_operating_point`) and the summary of an
evaluation, so the two are comparable number for number.

Outputs of :func:`evaluate` in ``out_dir`` (written atomically): ``metrics.json``, ``report.html``,
the plots as PNG files, and ``scores.csv`` (one row per image).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pneumoscan import __version__
from pneumoscan import metrics as M
from pneumoscan.inference.provenance import calibration_details, calibration_words
from pneumoscan.checkpoint import FALLBACK_THRESHOLD
from pneumoscan.constants import CLASS_NAMES, DEFAULT_CACHE_DIR
from pneumoscan.data import Record, index_dataset
from pneumoscan.evaluation.cause import cause_section
from pneumoscan.evaluation.report import write_report
from pneumoscan.io import ImageContext, ImageError, read_image_context
from pneumoscan.onboarding.operating_point import training_overlap, training_overlap_text
from pneumoscan.gate.reference import reference_of
from pneumoscan.gate.scope import ScopeGate
from pneumoscan.inference.torch_scoring import ScoredModel, resolve_device, score_dataset
from pneumoscan.onboarding.trainset import TENSOR_PREFIX, hash_files
from pneumoscan.result import ModelIdentity, Result
from pneumoscan.utils import atomic_write_text, file_sha256
from pneumoscan.worklist import csv_text, worklist_row

__all__ = ["SCORES_COLUMNS", "evaluate", "model_results", "write_scores"]

#: Case mixes (share of pneumonia) the calibration error is also given at: most sites see far fewer pneumonias
#: than the training data (77%), and a probability calibrated at one mix is not calibrated at another.
CASE_MIXES = (0.3, 0.1)

log = logging.getLogger(__name__)

#: The fixed threshold every report shows beside the operating and Youden ones, for reference (not a fallback).
FIXED_REFERENCE_THRESHOLD = 0.5

_KERMANY_NAME = re.compile(r"^(person\d+_(bacteria|virus)_\d+|(NORMAL2-)?IM-\d+(-\d+)+)$", re.IGNORECASE)


# --- checks a reader needs ------------------------------------------------------------------------------


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
                   f"pneumoscan chose one), so {FALLBACK_THRESHOLD:g} is used as the operating threshold. "
                   f"{FALLBACK_THRESHOLD:g} was not chosen for sensitivity and may miss more pneumonia than intended.")
    sc = entry.get("scope") or {}
    if sc.get("n_out_of_scope"):
        reasons = "; ".join(f"{n} {r}" for r, n in sc["by_reason"].items())
        out.append(f"The scope gate would call {sc['n_out_of_scope']} of the {sc['n_images']} evaluated images out of "
                   f"scope ({reasons}). They are included in the metrics; in use they would be "
                   f"'{M.decision_words('OUT_OF_SCOPE')}'.")
    if sc.get("n_cautioned"):
        out.append(f"{sc['n_cautioned']} of the {sc['n_images']} evaluated images are chest films unlike the training "
                   "films: in use they would be scored with the caution 'unfamiliar film'.")
    if not sc.get("feature_check", True):
        out.append("This checkpoint carries no scope/drift reference, so only DICOM metadata and pixel statistics "
                   "gate its inputs; add one with scripts/build_reference.py.")
    out.extend(a["text"] for a in entry["training_alerts"])
    if not (entry.get("training_overlap") or {}).get("checked", True):
        out.append("This checkpoint carries no list of its training images and has no split.csv beside it, so "
                   "pneumoscan cannot check whether these images were used to train it.")
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


def _training_alerts(ov: dict[str, Any], threshold_from_checkpoint: bool) -> list[dict[str, str]]:
    """The loud warnings when evaluated images are the model's own training or validation images:
    ``[{"kind": "train" | "val", "title", "text"}]``."""
    out = []
    if ov.get("n_train"):
        out.append({"kind": "train", "title": "Not a valid evaluation: the model was trained on some of these images",
                    "text": f"{training_overlap_text(ov, 'train')} were used to TRAIN this model. A model scores its "
                            "own training images almost perfectly: these results say nothing about new patients. "
                            "Evaluate on images the model has never seen."})
    if ov.get("n_val"):
        chosen = ("its best epoch was picked and its threshold and temperature chosen" if threshold_from_checkpoint
                  else "its best epoch was picked")
        out.append({"kind": "val", "title": "Optimistic: some of these images are the model's validation images",
                    "text": f"{training_overlap_text(ov, 'val')} are this model's VALIDATION images, on which "
                            f"{chosen}: these results are optimistic; expect new data to do worse."})
    if ov.get("n_calibration"):
        out.append({"kind": "calibration",
                    "title": "Optimistic: some of these images chose this model's site threshold",
                    "text": f"{training_overlap_text(ov, 'calibration')} are the films `pneumoscan calibrate` chose "
                            "this model's threshold and temperature on: these results are optimistic; evaluate on a "
                            "separate labelled set."})
    return out


def _image_hashes(scored: Sequence[ScoredModel], records: Sequence[Record], workers: int) -> list[int | None] | None:
    """Content hashes of the evaluated images, computed once, when any model carries its training images' hashes."""
    if not any(name.startswith(TENSOR_PREFIX) for sm in scored for name in sm.checkpoint.extra):
        return None
    return hash_files([r.path for r in records], workers=max(1, workers))


def _looks_like_kermany(source: str, records: Sequence[Record]) -> bool:
    names = [Path(r.path).stem for r in records]
    matches = sum(bool(_KERMANY_NAME.match(n)) for n in names)
    return "chest_xray" in source.lower() or "chest_xray" in (records[0].path.lower() if records else "") or (
        bool(names) and matches >= 0.9 * len(names))


# --- the command ----------------------------------------------------------------------------------------


def evaluate(checkpoints: Sequence[str | os.PathLike[str]], data: str | os.PathLike[str], out_dir: str | os.PathLike[str], *,
             split: str | None = None, cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR,
             bootstrap_samples: int | None = None, bootstrap_seed: int | None = None, level: float = 0.95,
             device: str = "auto", batch_size: int = 64, num_workers: int = 2, progress: bool = False,
             backend: str = "onnx", threads: int | None = None) -> dict[str, Any]:
    """Evaluate ``checkpoints`` on the labelled images of ``data`` (folder or CSV manifest, optional ``split``).

    Every model uses its own temperature and its own operating threshold from the checkpoint
    (:data:`~pneumoscan.checkpoint.FALLBACK_THRESHOLD` when it has none; the report says so); nothing is chosen on
    the evaluated data. The first checkpoint is the reference of the comparison (DeLong's test and a paired patient
    bootstrap of the AUC difference).
    Bootstrap settings default to the first checkpoint's ``eval`` config (2,000 resamples, seed 0).
    ``backend``: ``"onnx"`` scores with ONNX Runtime (``threads`` intra-op threads) on each checkpoint's export
    (:mod:`pneumoscan.inference.onnx_cache`); ``"torch"`` with torch on ``device``.

    Returns the dict written to ``out_dir/metrics.json``; ``report.html`` and PNG plots go beside it.
    """
    if not checkpoints:  # as predict and serve do: $PNEUMOSCAN_MODEL, else the shipped model
        from pneumoscan.inference.predictor import default_model_path

        checkpoints = [default_model_path()]
    t0 = time.perf_counter()
    out = Path(out_dir)
    index = index_dataset(data, split=split, check=False)
    records, scored, failures = score_dataset(checkpoints, list(index.records), Path(cache_dir), resolve_device(device),
                                              batch_size, num_workers, progress, onnx=_exports(checkpoints, backend),
                                              threads=threads)
    if not records:
        raise ValueError(f"{data}: no image could be decoded for every model")
    ecfg = scored[0].checkpoint.info.config.get("eval") or {}
    n_boot = int(bootstrap_samples if bootstrap_samples is not None else ecfg.get("bootstrap_samples", 2000))
    seed = int(bootstrap_seed if bootstrap_seed is not None else ecfg.get("bootstrap_seed", 0))
    y = np.array([r.label for r in records], dtype=np.int64)
    groups = [r.patient_id for r in records]
    boot = {"n_resamples": n_boot, "seed": seed, "level": level}
    hashes = _image_hashes(scored, records, num_workers)
    results = [model_results(sm, records) for sm in scored]
    result: dict[str, Any] = {
        "pneumoscan_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data": {"source": str(data), "split": split, "n_images": len(records), "n_patients": len(set(groups)),
                 "n_positive": int(y.sum()), "n_negative": int(y.size - y.sum()),
                 "n_skipped": len(index.skipped) + len(failures),
                 "kermany": _looks_like_kermany(str(data), records)},
        "bootstrap": {**boot,
                      "method": "Percentile interval; patients resampled with replacement (cluster bootstrap)"},
        "models": [_model_entry(i + 1, sm, records, res, y, hashes=hashes, **boot)
                   for i, (sm, res) in enumerate(zip(scored, results))],
        "comparison": _comparisons(scored, y, groups, **boot),
        "warnings": [f"{len(failures)} image(s) could not be decoded and were left out."] if failures else [],
    }
    _write_outputs(result, scored, records, results, out)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    atomic_write_text(out / "metrics.json", json.dumps(_json_safe(result), indent=2, sort_keys=False) + "\n")
    return result


def _exports(checkpoints: Sequence[str | os.PathLike[str]], backend: str) -> list[Path] | None:
    """The ONNX export of each checkpoint with ``backend="onnx"`` (shipped, cached or built once); None for torch."""
    if backend == "torch":
        return None
    if backend != "onnx":
        raise ValueError(f"backend must be 'onnx' or 'torch', got {backend!r}")
    from pneumoscan.inference.onnx_cache import open_for_checkpoint
    from pneumoscan.utils import file_sha256

    return [open_for_checkpoint(c, file_sha256(c), threads=1)[2] for c in checkpoints]


def model_results(sm: ScoredModel, records: Sequence[Record]) -> list[Result]:
    """One :class:`~pneumoscan.result.Result` per evaluated image, made as ``predict`` makes it: the model's
    probability, the scope gate's verdict (DICOM header, pixels, the model's features against the reference the
    checkpoint carries) and the decision at the stored operating threshold, made once, by the result. The metrics
    include every image; in use, the images out of scope would be "not assessed"."""
    gate = ScopeGate(reference_of(sm.checkpoint))
    info = sm.checkpoint.info
    identity = ModelIdentity(info.model, file_sha256(sm.checkpoint.path)[:12] if sm.checkpoint.path
                             else "in-memory", float(info.threshold), info.cause_threshold,
                             calibration_words(sm.checkpoint.meta))
    cause = sm.cause_probs
    out = []
    for i, rec in enumerate(records):
        ctx = ImageContext()
        try:
            if rec.path.lower().endswith((".dcm", ".dicom")):
                ctx = read_image_context(rec.path)
        except ImageError:
            pass  # it was decoded for the cache; a header read that fails now is no reason to refuse
        square = np.asarray(sm.images[sm.rows[i]])
        feats = None if sm.features is None else sm.features[i]
        verdict = gate.assess(ctx, square, feats)
        out.append(Result.scored(rec.path, float(sm.probs[i]), identity, in_scope=verdict.in_scope,
                                 scope_reason=verdict.reason, scope_evidence=verdict.evidence,
                                 scope_caution=verdict.caution, ood_score=verdict.ood_score, context=ctx,
                                 cause_probability=None if cause is None else float(cause[i])))
    return out


def _scope_entry(results: Sequence[Result], feature_check: bool) -> dict[str, Any]:
    """What the out-of-scope gate says of the evaluated images (counted from their results)."""
    out = [{"path": r.source, "reason": r.scope_reason, "evidence": r.scope_evidence}
           for r in results if not r.in_scope]
    n_caution = sum(bool(r.in_scope) and bool(r.scope_caution) for r in results)
    return {"n_images": len(results), "n_out_of_scope": len(out), "n_cautioned": n_caution,
            "feature_check": feature_check,
            "by_reason": dict(Counter(o["reason"] for o in out).most_common()), "out_of_scope": out[:200]}


def _model_entry(index: int, sm: ScoredModel, records: Sequence[Record], results: Sequence[Result], y: np.ndarray, *,
                 n_resamples: int, seed: int, level: float, hashes: Sequence[int | None] | None = None
                 ) -> dict[str, Any]:
    """One model's part of the result: its operating point, calibration, metric summary at its operating, the
    fixed reference and its Youden thresholds, the comparison with its validation figures, and its warnings."""
    ck, info = sm.checkpoint, sm.checkpoint.info
    op = info.operating_point
    ths = {"operating": info.threshold, "fixed_0.5": FIXED_REFERENCE_THRESHOLD, "youden": op.get("youden_threshold")}
    summary = M.summarize_scores(y, sm.probs, ths, groups=[r.patient_id for r in records],
                                 causes=[r.cause for r in records], n_resamples=n_resamples, seed=seed, level=level)
    overlap = training_overlap(ck, records, hashes=hashes)
    entry: dict[str, Any] = {
        "index": index, "checkpoint": str(ck.path), "model": info.model, "epoch": info.epoch,
        "image_size": info.preprocessing.image_size,
        "operating_point": op or None, "operating_point_source": info.threshold_source,
        "calibration": {"temperature": info.temperature, "fitted_on_validation": info.calibration or None,
                        "ece_raw": M.ece(y, sm.probs_raw), "ece_calibrated": M.ece(y, sm.probs),
                        "brier_raw": M.brier(y, sm.probs_raw), "brier_calibrated": M.brier(y, sm.probs),
                        "nll_raw": M.binary_nll(y, sm.logits),
                        "nll_calibrated": M.binary_nll(y, sm.logits, info.temperature),
                        "where": calibration_words(ck.meta), "details": calibration_details(ck.meta),
                        "prevalence": float(np.mean(y)) if len(y) else None,
                        "ece_at_prevalence": {str(mix): v for mix in CASE_MIXES
                                              if math.isfinite(v := M.ece_at_prevalence(y, sm.probs, mix))}},
        "summary": summary, "training_overlap": overlap,
        "training_alerts": _training_alerts(overlap, info.threshold_source == "checkpoint"),
        "scope": _scope_entry(results, reference_of(ck) is not None),
        "cause": cause_section(sm.probs, sm.cause_probs,
                               None if sm.cause_logits is None else M.apply_temperature(sm.cause_logits, 1.0),
                               records, threshold=info.threshold, cause_meta=info.cause, n_resamples=n_resamples,
                               seed=seed, level=level),
    }
    val = info.val_summary
    v, e = (_metric(val, "operating", "sensitivity") if val else None), _metric(summary, "operating", "sensitivity")
    if v and e:
        entry["validation_comparison"] = {
            "metric": "sensitivity at the operating threshold", "validation": v, "evaluated": e,
            "validation_specificity": _metric(val, "operating", "specificity"),
            "evaluated_specificity": _metric(summary, "operating", "specificity"),
            "sensitivity_drop_beyond_ci": _drop_beyond_ci(v, e),
        }
    entry["warnings"] = _model_warnings(entry)
    return entry


def _comparisons(scored: Sequence[ScoredModel], y: np.ndarray, groups: list[str], *, n_resamples: int, seed: int,
                 level: float) -> list[dict[str, Any]]:
    """Every model after the first against the first: DeLong's test and a paired patient bootstrap of the AUC
    difference."""
    comparison = []
    for i, sm in enumerate(scored[1:], start=2):
        try:
            dl = M.delong_test(y, scored[0].probs, sm.probs)
        except ValueError as exc:
            dl = {"error": str(exc)}
        comparison.append({"model": i, "reference": 1, "delong": dl,
                           "bootstrap_auc_difference": M.bootstrap_auc_difference(
                               y, scored[0].probs, sm.probs, groups=groups, n_resamples=n_resamples, seed=seed,
                               level=level)})
    return comparison


def _write_outputs(result: dict[str, Any], scored: Sequence[ScoredModel], records: Sequence[Record],
                   results: Sequence[Sequence[Result]], out: Path) -> None:
    """The report, its plots and each model's ``scores.csv`` into ``out``; their names into ``result["outputs"]``."""
    out.mkdir(parents=True, exist_ok=True)
    prefixes = [""] if len(scored) == 1 else [f"model{i}-" for i in range(1, len(scored) + 1)]
    result["outputs"] = write_report(result, scored, records, results, out, prefixes)
    for pre, res in zip(prefixes, results):
        write_scores(out / f"{pre}scores.csv", records, res)
        result["outputs"][f"{pre}scores"] = f"{pre}scores.csv"


#: Columns of ``scores.csv``: the image and its label, then the columns of ``predict``'s worklist with the same names
#: and values (the probability, the score and threshold on 0-100, the decision, the scope verdict, the model).
SCORES_COLUMNS = ("path", "label", "patient_id", "true_cause", "probability", "score", "score_threshold", "decision",
                  "decision_text", "positive", "in_scope", "scope_reason", "scope_caution", "threshold", "cause", "cause_text",
                  "cause_score", "cause_probability", "cause_threshold", "model_name", "model_version", "disclaimer")


def write_scores(path: Path, records: Sequence[Record], results: Sequence[Result]) -> None:
    """One row per evaluated image, atomically: :data:`SCORES_COLUMNS`, each result's row as ``predict`` writes it
    (:func:`pneumoscan.worklist.worklist_row`) beside the image's label, patient (the data set's) and its known cause
    (``true_cause``: the data set's ``bacteria``/``virus``; ``cause`` is the model's, as in ``predict``'s worklist)."""
    rows = [{**worklist_row(r), "label": CLASS_NAMES[rec.label], "patient_id": rec.patient_id,
             "true_cause": rec.cause or ""} for rec, r in zip(records, results)]
    atomic_write_text(path, csv_text(rows, {}, columns=SCORES_COLUMNS))


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
