"""Onboarding a new site without labels: ``adapt`` (AdaBN), the site's prevalence (EM), and the site state.

A model carries the normalisation statistics of its training films in its BatchNorm layers. Films from another
scanner, exposure policy or resizing chain shift the activations, and the calibrated scores shift with them. With
no labels at all, :func:`adapt` does two things on a folder of the site's own films (at least
:data:`MIN_SITE_IMAGES` of them in scope, any class sub-folders ignored):

* **Class-balanced AdaBN** (Li et al., "Revisiting Batch Normalization For Practical Domain Adaptation", 2016,
  with label-shift weights; :mod:`pneumoscan.onboarding.adabn`): every BatchNorm's running mean and variance is
  reset and re-estimated on the site's in-scope films, each film weighted so that the weighted films have the
  training mix of pneumonia and normal films (plain AdaBN follows the site's case mix instead: issue #26). The
  weights come from the unadapted model's probabilities moved to the site's prevalence. BatchNorm layers alone run
  in training mode (dropout off), no gradients; the films are shuffled (seeded) before they are cut into batches.
  The weights, the operating threshold and the temperature are NOT changed. ``balance=False`` gives plain AdaBN.
  A model without BatchNorm (``seed-cnn``) has nothing to re-estimate and is refused.
* **The site's prevalence** (EM, Saerens, Latinne & Decaestecker, 2002), from the unadapted model's calibrated
  probabilities, checked (:func:`~pneumoscan.onboarding.adabn.mix_check`) against black-box shift estimation on
  the adapted model and by a bootstrap interval; when the checks fail, ``adapt`` warns that the estimate (and so the
  balancing) is unreliable. It changes no decision (a threshold for this site is chosen on labelled films:
  ``pneumoscan calibrate``).

The scope gate and the drift check compare a film's pooled features with a reference of training-film features
(:mod:`pneumoscan.gate.reference`). Adaptation moves those features, so the parent's reference no longer describes
what the adapted model sees. **After adaptation, scope and drift compare with the site's own commissioning
films:** the adapted checkpoint carries a *site* reference built from the in-scope films given to ``adapt`` (a
seeded half forms the bank, the other half sets the scope cut-off and the drift check's null distribution). The
drift check needs 100 films in that half, so 200 in-scope films; with fewer the model is gated but has no drift
check, and :func:`adapt` says so.

Measured on simulated sites at 20%, 50% and 77% pneumonia (``benchmarks/site_mix.py``,
``benchmarks/results/site_mix.json``): see the model card's "At a new site".

Films the model was trained on are refused by content (:mod:`pneumoscan.onboarding.trainset`): they are not a site. Films of
its validation set are allowed, with a warning. Duplicates (same decoded pixels) count once. The new checkpoint
records where it came from under the metadata key ``adaptation`` (method, number of films, a hash of the film set,
date, the parent file's SHA-256...) and ``site_state: "adapted"``; :func:`site_state` and :func:`provenance_line`
describe any model's state for people (``predict``, ``serve`` and the page show it).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pneumoscan import __version__
from pneumoscan.checkpoint import load_checkpoint, save_checkpoint
from pneumoscan.gate.drift import MIN_IMAGES as DRIFT_MIN_IMAGES
from pneumoscan.inference.files import decode_item
from pneumoscan.inference.predictor import Predictor, RuntimeOptions
from pneumoscan.metrics import decide
from pneumoscan.result import Result
from pneumoscan.preprocessing import (
    Film,
    Preprocessing,
)
from pneumoscan.inference.provenance import provenance, provenance_line, site_state
from pneumoscan.gate.reference import MIN_REFERENCE_VAL
from pneumoscan.onboarding.adabn import (
    AdaptationError,
    EMPrevalence,
    adabn,
    batchnorm_layers,
    class_balanced_adabn,
    em_prevalence,
    mix_check,
)
from pneumoscan.onboarding.reference_builder import build_reference
from pneumoscan.gate.scope import ADULT_AGE_YEARS
from pneumoscan.inference.scoring import (
    expit,
    features_cached,
    model_from_checkpoint,
    resolve_device,
)
from pneumoscan.onboarding.trainset import TENSOR_PREFIX as TRAINSET_PREFIX
from pneumoscan.onboarding.trainset import image_set_sha256, overlap, pixel_hash
from pneumoscan.utils import file_sha256

__all__ = [
    "ADAPT_TENSOR",
    "MIN_SITE_IMAGES",
    "AdaptResult",
    "AdaptationError",
    "EMPrevalence",
    "adabn",
    "adapt",
    "batchnorm_layers",
    "em_prevalence",
    "image_set_sha256",
    "provenance",
    "provenance_line",
    "site_state",
]

log = logging.getLogger(__name__)

#: The fewest in-scope site films :func:`adapt` accepts.
MIN_SITE_IMAGES = 100
#: The checkpoint tensor holding the pixel hashes of the films a model was adapted on (so that a later
#: ``calibrate`` or ``evaluate`` can tell them apart from fresh labelled films).
ADAPT_TENSOR = TRAINSET_PREFIX + "adapt"
_DRIFT_MIN_VAL = 2 * DRIFT_MIN_IMAGES  # what pneumoscan.gate.drift.DriftCheck needs in the reference's second half


# The site state of any model (site_state, provenance, provenance_line) lives in pneumoscan.inference.provenance, which
# needs no torch; it is re-exported here. The methods live in pneumoscan.onboarding.adabn; re-exported here too.
# image_set_sha256 lives in pneumoscan.onboarding.trainset (fine-tuning records it too).


# ----------------------------------------------------------------------------- adapt


@dataclass
class AdaptResult:
    """What :func:`adapt` did: the new checkpoint, its ``adaptation`` record, and warnings for people."""

    out: Path
    adaptation: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    @property
    def drift_available(self) -> bool:
        return bool(self.adaptation["reference"]["drift_available"])


def _read_films(paths: Sequence[str], spec: Preprocessing, workers: int) -> list[tuple[int, Film] | str]:
    """``(pixel hash, film)`` per file, or the message saying why it could not be read, in input order: each file is
    read once, the one way (:func:`~pneumoscan.preprocessing.read_film` with the film kept at its own size: the hash
    is of the full decode, as the training films' hashes are; the square is the one the predictor scores)."""
    def one(path: str) -> tuple[int, Film] | str:
        film = decode_item(path, spec, full=True, raise_errors=False)
        if isinstance(film, str):
            return film
        assert film.gray is not None
        return pixel_hash(film.gray), dataclasses.replace(film, gray=None)  # the square is all that is kept

    if workers <= 1:
        return [one(p) for p in paths]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="pneumoscan-adapt") as pool:
        return list(pool.map(one, paths))


def _check_paths(src: Path, dst: Path) -> None:
    if not src.is_file():
        raise AdaptationError(f"{src}: model file not found")
    if src.suffix.lower() == ".onnx":
        raise AdaptationError(f"{src}: adapt needs the .safetensors checkpoint (the BatchNorm statistics live in the "
                              "torch weights); an ONNX export cannot be adapted. Adapt the checkpoint, then export it")
    if dst.suffix.lower() != ".safetensors":
        raise AdaptationError(f"{dst}: the adapted checkpoint must be a .safetensors file")
    for p in (dst, dst.with_suffix(".json")):
        if p.exists():
            raise AdaptationError(f"{p} already exists; adapt writes a new checkpoint and never replaces a file "
                                  "(choose another --out)")


def adapt(checkpoint: str | os.PathLike[str], images: Sequence[str | os.PathLike[str]],
          out: str | os.PathLike[str], *, min_images: int = MIN_SITE_IMAGES,
          adult_age_years: float = ADULT_AGE_YEARS, batch_size: int = 32, seed: int = 0,
          device: str = "cpu", workers: int = 2, threads: int | None = None,
          progress: bool = False, balance: bool = True) -> AdaptResult:
    """Adapt ``checkpoint`` to a site from its unlabelled films ``images`` and write the result to ``out``.

    See the module docstring. Steps: refuse a model without BatchNorm; decode every film once (content hash and
    model-size square); refuse films the model trained on (warn on validation films); gate every film with the
    parent's :class:`~pneumoscan.inference.predictor.Predictor` (only in-scope films count; at least ``min_images``); EM
    prevalence; class-balanced AdaBN (``balance=False``: plain); the prevalence checked; a site reference (seeded halves, ``seed``); write ``out`` (a new file; the parent's
    ``trainset.*`` tensors and the adaptation films' hashes travel with it).

    Raises:
        AdaptationError: no BatchNorm, an ONNX or missing model, ``out`` exists, films of the training set, or
            fewer than ``min_images`` in-scope films (the message gives the counts).
        CheckpointError: the model file is not a readable pneumoscan checkpoint.
    """
    src, dst = Path(checkpoint), Path(out)
    if min_images < MIN_SITE_IMAGES:
        raise ValueError(f"min_images must be at least {MIN_SITE_IMAGES}, got {min_images}")
    _check_paths(src, dst)
    ckpt = load_checkpoint(src)
    info = ckpt.info
    model = model_from_checkpoint(ckpt)
    n_bn = len(batchnorm_layers(model))
    if n_bn == 0:
        raise AdaptationError(f"{src}: model {info.model!r} has no BatchNorm layers, so adapt (which re-estimates "
                              "BatchNorm statistics on the site's films) cannot change it. Calibrate it on labelled "
                              "films of this site instead (pneumoscan calibrate), or adapt a model with BatchNorm")
    paths = [str(p) for p in images]
    if not paths:
        raise AdaptationError("no image files given")
    spec = info.preprocessing
    t0 = time.perf_counter()
    decoded = _read_films(paths, spec, workers)
    hashes = [None if isinstance(d, str) else d[0] for d in decoded]
    warnings: list[str] = []
    seen = overlap(ckpt, hashes)
    if seen.train:
        examples = ", ".join(paths[i] for i in seen.train[:5])
        raise AdaptationError(
            f"{len(seen.train)} of the {len(paths)} files are films this model was TRAINED on (same decoded pixels; "
            f"e.g. {examples}); they are not this site's films and would hide how it differs. Remove them and "
            "give films the model has never seen")
    if seen.val:
        examples = ", ".join(paths[i] for i in seen.val[:3])
        warnings.append(f"{len(seen.val)} of the files are films of this model's validation set (e.g. {examples}): "
                        "they come from the training hospital, not this site")
    if not seen.known:
        warnings.append("the model carries no list of its training films, so films it trained on cannot be "
                        "recognised: make sure these are this site's own films")

    predictor = Predictor.from_checkpoint(src, options=RuntimeOptions(threads=threads),
                                          adult_age_years=adult_age_years)
    results: list[Result] = []
    for start in range(0, len(paths), max(1, batch_size)):  # the films read above, gated: nothing decoded again
        part = decoded[start:start + max(1, batch_size)]
        results += predictor.assess_batch(paths[start:start + len(part)],
                                          [d if isinstance(d, str) else d[1] for d in part])
    used, first_of = [], {}
    n_duplicates = 0
    reasons: Counter[str] = Counter()
    for i, (r, d) in enumerate(zip(results, decoded)):
        if isinstance(d, str) or not r.read:
            continue
        if not r.in_scope:
            reasons[r.scope_reason] += 1
            continue
        if d[0] in first_of:
            n_duplicates += 1
            continue
        first_of[d[0]] = i
        used.append(i)
    n_unreadable = sum(not r.read for r in results)
    n_out = sum(reasons.values())
    if n_duplicates:
        warnings.append(f"{n_duplicates} file(s) repeat another file's pixels and were counted once")
    if len(used) < min_images:
        raise AdaptationError(
            f"only {len(used)} in-scope film(s) of {len(paths)} file(s) ({n_out} out of scope, {n_unreadable} "
            f"unreadable, {n_duplicates} duplicate(s)); adapt needs at least {min_images} in-scope films of this "
            "site: add more of its consecutive, unselected films"
            + (f". Out-of-scope reasons: {dict(reasons.most_common(3))}" if n_out else ""))

    squares = np.stack([decoded[i][1].square for i in used])  # type: ignore[union-attr]
    parent_probs = np.array([results[i].probability for i in used], dtype=np.float64)
    device_ = resolve_device(device)
    model = model.to(device_)
    prevalence = (info.val_summary or {}).get("prevalence")
    training_prevalence = None if prevalence is None else float(prevalence)
    if training_prevalence is None or not 0 < training_prevalence < 1:
        training_prevalence = None
        warnings.append("the model records no training prevalence; the EM estimate starts from 0.5 and assumes "
                        "the scores were calibrated to it")
    start = training_prevalence or 0.5
    em_parent = em_prevalence(parent_probs, start)
    balanced = None
    if balance:
        balanced = class_balanced_adabn(model, squares, spec, parent_probs=parent_probs, training_prevalence=start,
                                        site_prevalence=em_parent.prevalence, batch_size=batch_size, device=device_,
                                        seed=seed)
    else:
        adabn(model, squares, spec, batch_size=batch_size, device=device_, seed=seed)
    rows = np.arange(len(used))
    logits, _ = features_cached(model, squares, rows, spec, batch_size=batch_size, device=device_)
    probs = expit(logits / info.temperature)
    youden = ((info.val_summary or {}).get("thresholds") or {}).get("youden") or {}
    ymetrics = youden.get("metrics") or {}
    check = mix_check(parent_probs, start, probs_adapted=probs, bbse_threshold=youden.get("threshold"),
                      bbse_sensitivity=(ymetrics.get("sensitivity") or {}).get("value"),
                      bbse_specificity=(ymetrics.get("specificity") or {}).get("value"), seed=seed)
    if not em_parent.converged:
        warnings.append(f"the EM prevalence estimate did not converge in {em_parent.iterations} iterations")
    if not check.reliable:
        warnings.append(
            f"the estimate of this site's share of pneumonia ({check.prevalence:.0%}) is UNRELIABLE: "
            + "; ".join(check.reasons)
            + (". The class balancing rests on it: check the result on labelled films (pneumoscan calibrate, "
               "pneumoscan evaluate), or adapt on more, consecutive films" if balance else ""))

    perm = np.random.default_rng(seed).permutation(len(used))
    bank_rows, val_rows = np.sort(perm[: len(used) // 2]), np.sort(perm[len(used) // 2:])
    if len(val_rows) < MIN_REFERENCE_VAL:  # pragma: no cover - min_images >= 100 makes this impossible
        raise AdaptationError(f"the site reference needs at least {MIN_REFERENCE_VAL} films in its second half")
    ref = build_reference(model, squares, bank_rows, val_rows, spec, bank_size=len(bank_rows), seed=seed,
                          batch_size=batch_size, device=device_,
                          source=f"site commissioning films ({len(used)} in scope, given to pneumoscan adapt)")
    drift_available = len(val_rows) >= _DRIFT_MIN_VAL
    ref.info.update({"kind": "site", "prevalence": em_parent.prevalence})

    set_hashes = [decoded[i][0] for i in used]  # type: ignore[index]
    parent_sha = file_sha256(src)
    adaptation: dict[str, Any] = {
        "method": "AdaBN, class-balanced" if balance else "AdaBN",
        "method_detail": ("BatchNorm running mean and variance re-estimated on the site's in-scope films (Li et al., "
                          "2016)" + (", each film weighted so that the films have the training mix of classes "
                                     "(label-shift weights from the unadapted model's probabilities at the EM "
                                     "prevalence)" if balance else "")
                          + "; weights, operating threshold and temperature unchanged"),
        "n_images": len(used), "image_set_sha256": image_set_sha256(set_hashes),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "parent_model_sha256": parent_sha, "parent_model_path": str(src), "parent_model": info.model,
        "n_files": len(paths), "n_out_of_scope": n_out, "n_unreadable": n_unreadable, "n_duplicates": n_duplicates,
        "n_refused": n_out + n_unreadable + n_duplicates, "out_of_scope_reasons": dict(reasons.most_common()),
        "n_in_validation_set": len(seen.val), "trainset_checked": seen.known,
        "n_batchnorm_layers": n_bn, "batch_size": int(batch_size), "seed": int(seed),
        "balanced": bool(balance),
        "balance_weights": None if balanced is None else {
            "target_prevalence": start, "site_prevalence": balanced.prevalence,
            "min": float(balanced.weights.min()), "max": float(balanced.weights.max()),
            "effective_n": balanced.effective_n},
        "prevalence_em": em_parent.prevalence, "prevalence_em_iterations": em_parent.iterations,
        "prevalence_em_parent": em_parent.prevalence, "prevalence_em_adapted": check.em_adapted,
        "prevalence_check": check.to_dict(), "prevalence_reliable": check.reliable,
        "prevalence_method": "EM on the unadapted model's calibrated probabilities (Saerens et al., 2002), checked "
                             "against BBSE on the adapted model (Lipton et al., 2018) and by a bootstrap interval; "
                             "it sets the balancing weights and changes no decision",
        "training_prevalence": training_prevalence,
        "threshold": info.threshold, "temperature": info.temperature,
        "flag_rate_before": float(np.mean([results[i].positive for i in used])),
        "flag_rate_after": float(np.mean(decide(probs, info.threshold))),
        "mean_probability_before": float(parent_probs.mean()), "mean_probability_after": float(probs.mean()),
        "reference": {"n_bank": len(bank_rows), "n_val": len(val_rows), "knn_cut": ref.knn_cut,
                      "drift_available": drift_available, "drift_needs_val": _DRIFT_MIN_VAL},
        "pneumoscan_version": __version__, "seconds": round(time.perf_counter() - t0, 1),
    }
    if ckpt.meta.get("adaptation"):
        adaptation["previous_adaptation"] = ckpt.meta["adaptation"]
    if ckpt.meta.get("site_calibration"):  # moved into the record: the new model is adapted, not yet calibrated
        adaptation["parent_site_calibration"] = ckpt.meta["site_calibration"]
        warnings.append("the parent's threshold was calibrated at a site before this adaptation; it is kept, but "
                        "it was chosen on the unadapted model: calibrate again on labelled films")
    adaptation["warnings"] = list(warnings)
    meta = {k: v for k, v in ckpt.meta.items() if k not in ("format", "site_calibration")}
    meta.update({"reference": ref.to_meta(), "adaptation": adaptation, "site_state": "adapted"})
    extra = {k: v for k, v in ckpt.extra.items() if k.startswith(TRAINSET_PREFIX) and k != ADAPT_TENSOR}
    extra[ADAPT_TENSOR] = torch.tensor(sorted(set(set_hashes)), dtype=torch.int64)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_checkpoint(dst, state, meta, extra={**extra, **ref.to_tensors()})
    for w in warnings:  # returned (and stored) for the caller to show; the command prints them
        log.info("adapt: %s", w)
    log.info("adapted %s on %d films -> %s", src, len(used), dst)
    return AdaptResult(out=dst, adaptation=adaptation, warnings=warnings)
