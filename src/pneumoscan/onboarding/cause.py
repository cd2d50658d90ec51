"""The second question: is a pneumonia more like bacterial or viral? The cause output's targets, its operating
point and calibration on validation, and a cause head fitted on a model's frozen features.

The data set labels every PNEUMONIA training film bacterial or viral in its name (``personN_bacteria_M``,
``personN_virus_M``); no microbiology is known to us, so the labels are what the data set says, and the output is
"a pattern more like" one cause, weaker evidence than the main finding and never a treatment recommendation.

The cause output is a second column of the network's head (the logit that a pneumonia is viral rather than
bacterial), on the same pooled features as the main output. It is learned either jointly with the main output
(``model.cause_head`` in the training config; its loss counts only films whose cause is known) or afterwards, on the
frozen features of a trained model (:func:`add_cause_head`: a class-balanced logistic regression, which is exactly a
linear head on the pooled features). Either way its operating point is chosen on validation by the rule
:data:`CAUSE_RULE` and stored in the checkpoint under ``cause`` beside the main threshold
(:func:`choose_cause_operating_point`), with its own temperature when fitting one improves the validation
log-likelihood by the margin :data:`MIN_NLL_GAIN`.

Only a flagged, in-scope film gets a cause (:class:`pneumoscan.result.Result`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pneumoscan import metrics as M

__all__ = ["CAUSE_CODES", "CAUSE_RULE", "MIN_CAUSE_FILMS", "MIN_NLL_GAIN", "add_cause_head",
           "cause_targets", "choose_cause_operating_point", "fit_cause_head"]

log = logging.getLogger(__name__)

#: A record's cause (the data set's name part) -> the cause output's target (1: viral).
CAUSE_CODES = {"bacteria": 0, "virus": 1}
#: How the cause threshold is chosen on validation.
CAUSE_RULE = "balanced accuracy (Youden's J) on the validation pneumonia films whose cause is known"
#: The fewest validation films of each cause an operating point is chosen on.
MIN_CAUSE_FILMS = 10
#: A fitted cause temperature is kept only when it lowers the validation negative log-likelihood by this much (nats
#: per film); otherwise the temperature is 1 (measured, not assumed).
MIN_NLL_GAIN = 0.005


def cause_targets(records: Sequence[Any]) -> np.ndarray:
    """int64 ``(N,)``: 1 viral, 0 bacterial, -1 unknown (a NORMAL film, or a PNEUMONIA film whose name gives no
    cause) for each record (``label``, ``cause``)."""
    return np.array([CAUSE_CODES.get(r.cause or "", -1) if int(r.label) == 1 else -1 for r in records],
                    dtype=np.int64)


def _nll(y: np.ndarray, z: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def choose_cause_operating_point(cause_logits: np.ndarray, targets: np.ndarray, groups: Sequence[str] | None = None,
                                 *, method: str, n_resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """The cause output's ``cause`` metadata, chosen on validation films with a known cause (``targets`` >= 0).

    Temperature: fitted by the log-likelihood (:func:`pneumoscan.metrics.fit_temperature`) and kept when it lowers
    the negative log-likelihood by :data:`MIN_NLL_GAIN` or more (else 1). Threshold: :data:`CAUSE_RULE`, on the
    calibrated probability. Returns ``{"threshold", "temperature", "rule", "method", "n_val", "n_viral",
    "n_bacterial", "val": {"auc": {"value", "ci"}, "sensitivity_viral", "specificity_viral", "balanced_accuracy",
    "ece_raw", "ece", "nll_raw", "nll"}, "chosen"}``.

    Raises:
        ValueError: fewer than :data:`MIN_CAUSE_FILMS` validation films of either cause.
    """
    known = np.asarray(targets) >= 0
    y = np.asarray(targets)[known].astype(np.int64)
    z = np.asarray(cause_logits, dtype=np.float64)[known]
    n_viral, n_bact = int(y.sum()), int((1 - y).sum())
    if min(n_viral, n_bact) < MIN_CAUSE_FILMS:
        raise ValueError(f"the cause threshold needs at least {MIN_CAUSE_FILMS} validation films of each cause, got "
                         f"{n_viral} viral and {n_bact} bacterial")
    fitted = float(M.fit_temperature(z, y))
    nll_raw, nll_fit = _nll(y, z), _nll(y, z / fitted)
    temperature = fitted if nll_raw - nll_fit >= MIN_NLL_GAIN else 1.0
    p = M.apply_temperature(z, temperature)
    threshold = _between(float(M.youden_threshold(y, p)), p)
    g = None if groups is None else [gr for gr, k in zip(groups, known) if k]
    auc = M.roc_auc(y, p)
    boot = M.bootstrap_ci(y, p, {"cause": threshold}, groups=g, n_resamples=n_resamples, seed=seed)
    lo, hi = boot["roc_auc"]
    return {
        "threshold": threshold, "temperature": temperature, "rule": CAUSE_RULE, "method": method,
        "n_val": int(len(y)), "n_viral": n_viral, "n_bacterial": n_bact,
        "val": {"auc": {"value": auc, "ci": [lo, hi]},
                "sensitivity_viral": {"value": M.sensitivity(y, p, threshold),
                                      "ci": boot["thresholds"]["cause"]["sensitivity"]},
                "specificity_viral": {"value": M.specificity(y, p, threshold),
                                      "ci": boot["thresholds"]["cause"]["specificity"]},
                "accuracy": {"value": M.accuracy(y, p, threshold), "ci": boot["thresholds"]["cause"]["accuracy"]},
                "balanced_accuracy": M.balanced_accuracy(y, p, threshold), "ci_method": boot["method"],
                "ece_raw": M.ece(y, M.apply_temperature(z, 1.0)), "ece": M.ece(y, p),
                "nll_raw": nll_raw, "nll": _nll(y, z / temperature), "temperature_fitted": fitted},
        "chosen": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _between(t: float, p: np.ndarray) -> float:
    """A threshold that splits the validation films as ``t`` does (``p >= t``) but lies halfway to the next lower
    score, on no film's score: a threshold equal to a film's score would flip it on a 1e-7 difference between the
    backends (as the scope cut-off once did, :func:`pneumoscan.gate.reference.midpoint_cut`)."""
    below = p[p < t]
    return float((t + below.max()) / 2.0) if below.size else t


def fit_cause_head(features: np.ndarray, targets: np.ndarray, *, seed: int = 0) -> tuple[np.ndarray, float]:
    """A class-balanced logistic regression of viral vs bacterial on pooled features ``(N, C)`` of films whose cause
    is known (``targets`` >= 0), its L2 strength chosen by 5-fold cross-validated log-loss on those films (grouped
    folds are not needed: the caller passes training films only). Returns ``(weight (C,), bias)``: a linear head on
    the same features, so it runs inside the exported network."""
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.preprocessing import StandardScaler

    known = np.asarray(targets) >= 0
    x = np.asarray(features, dtype=np.float64)[known]
    y = np.asarray(targets)[known]
    scaler = StandardScaler().fit(x)
    with warnings.catch_warnings():  # scikit-learn's notices of coming API changes, not about this fit
        warnings.simplefilter("ignore", FutureWarning)
        lr = LogisticRegressionCV(Cs=np.logspace(-4, 1, 11), cv=5, class_weight="balanced", scoring="neg_log_loss",
                                  max_iter=5000, random_state=seed).fit(scaler.transform(x), y)
    w = lr.coef_[0] / scaler.scale_  # undo the standardisation: one linear layer on the raw pooled features
    b = float(lr.intercept_[0] - np.sum(lr.coef_[0] * scaler.mean_ / scaler.scale_))
    return w.astype(np.float32), b


def add_cause_head(checkpoint: str | os.PathLike[str], data: str | os.PathLike[str], out: str | os.PathLike[str], *,
                   split: str | None = None, cache_dir: str | os.PathLike[str] | None = None, device: str = "cpu",
                   batch_size: int = 64, seed: int = 0, replace: bool = False) -> dict[str, Any]:
    """Give a trained model a cause output without retraining it: rebuild its own patient split over ``data`` (the
    folder it trained on), fit :func:`fit_cause_head` on the frozen pooled features of its TRAINING pneumonia films
    with a known cause, choose the operating point on its VALIDATION films, and write ``out``: the same weights with
    a second head row, ``outputs`` ``["pneumonia", "viral"]`` and ``cause`` metadata. The main output is unchanged
    (same weights, same logits). With ``replace`` a model that has a cause output already (e.g. trained jointly)
    gets its cause row refitted on its frozen features instead. Returns the ``cause`` metadata.

    Raises:
        DatasetError: the data cannot be indexed or split; ValueError: ``out`` is the source file, the model has a
            cause output already, or too few films of a cause.
    """
    import torch

    from pneumoscan.checkpoint import load_checkpoint, save_checkpoint
    from pneumoscan.constants import DEFAULT_CACHE_DIR
    from pneumoscan.data import build_cache, model_split
    from pneumoscan.inference.torch_scoring import features_cached, model_from_checkpoint, resolve_device

    src, dst = Path(checkpoint), Path(out)
    if dst.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"{dst}: write the checkpoint with its cause head to a new file, not over its source")
    ckpt = load_checkpoint(src)
    if ckpt.info.has_cause and not replace:
        raise ValueError(f"{src}: the model has a cause output already (pass replace to refit it)")
    previous = ckpt.info.cause if ckpt.info.has_cause else None
    if ckpt.info.has_cause:  # the main output alone, as if it had none: the cause row is refitted below
        state0 = dict(ckpt.state_dict)
        for key, value in state0.items():
            if key.startswith("head.") and value.ndim >= 1 and value.shape[0] == 2:
                state0[key] = value[:1].clone()
        meta0 = {k: v for k, v in ckpt.meta.items() if k not in ("outputs", "cause")}
        ckpt = dataclasses.replace(ckpt, state_dict=state0, meta=meta0)
    info = ckpt.info
    train_idx, val_idx = model_split(data, info.config.get("data") or {}, split=split)
    records = list(train_idx.records) + list(val_idx.records)
    cache = build_cache(records, info.preprocessing, cache_dir or DEFAULT_CACHE_DIR, progress=False)
    val_paths = {r.path for r in val_idx.records}
    is_val = np.array([r.path in val_paths for r in cache.records], dtype=bool)
    targets = cause_targets(cache.records)
    dev = resolve_device(device)
    model = model_from_checkpoint(ckpt).to(dev)
    tr = np.flatnonzero(~is_val & (targets >= 0))
    va = np.flatnonzero(is_val & (targets >= 0))
    t0 = time.perf_counter()
    _, f_tr = features_cached(model, cache.images, tr, info.preprocessing, batch_size=batch_size, device=dev)
    _, f_va = features_cached(model, cache.images, va, info.preprocessing, batch_size=batch_size, device=dev)
    w, b = fit_cause_head(f_tr, targets[tr], seed=seed)
    z_va = f_va.astype(np.float64) @ w.astype(np.float64) + b
    cause = choose_cause_operating_point(
        z_va, targets[va], [cache.records[i].patient_id for i in va],
        method=f"frozen features: class-balanced logistic regression on the pooled features of {len(tr)} training "
               "pneumonia films with a known cause (L2 by 5-fold cross-validated log-loss)", seed=seed)
    cause["n_train"] = int(len(tr))
    if previous:
        cause["replaced"] = {"method": previous.get("method"), "val_auc": (previous.get("val") or {}).get("auc")}
    cause["seconds"] = round(time.perf_counter() - t0, 1)
    state = dict(ckpt.state_dict)
    wk, bk = _last_linear(model, f_tr.shape[1], src)
    state[wk] = torch.cat([state[wk], torch.from_numpy(w)[None].to(state[wk].dtype)], dim=0)
    state[bk] = torch.cat([state[bk], torch.tensor([b], dtype=state[bk].dtype)])
    meta = {**ckpt.meta, "outputs": ["pneumonia", "viral"], "cause": cause}
    save_checkpoint(dst, state, meta, extra=ckpt.extra)
    log.info("cause head fitted on %d training films: validation AUC %.3f, threshold %.3f", len(tr),
             cause["val"]["auc"]["value"], cause["threshold"])
    return cause


def _last_linear(model: Any, n_features: int, src: Path) -> tuple[str, str]:
    """The state-dict keys of the head's last linear layer, which must read the pooled features directly (so that a
    logistic regression on them is a second row of it); a head with a hidden layer (seed-cnn) is refused."""
    from torch import nn

    linears = [(name, m) for name, m in model.head.named_modules() if isinstance(m, nn.Linear)]
    if len(linears) != 1 or linears[0][1].in_features != n_features:
        raise ValueError(f"{src}: model {type(model).__name__}'s head is not one linear layer on its pooled "
                         "features, so a cause head on frozen features cannot be added to it; train it with "
                         "model.cause_head = true instead")
    name = linears[0][0]
    return f"head.{name}.weight", f"head.{name}.bias"
