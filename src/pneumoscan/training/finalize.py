"""The end of a training run: the best checkpoint gains its operating point, calibration, scope/drift reference (with
the drift check's null table, computed once here: :func:`pneumoscan.onboarding.reference_builder.with_drift_null`)
and the content hashes of its training and validation films; the validation scores are written beside it."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pneumoscan.checkpoint import load_checkpoint, save_checkpoint
from pneumoscan.config import Config
from pneumoscan.data import ImageCache, write_scores_csv
from pneumoscan.models import create_model
from pneumoscan.onboarding.cause import MIN_CAUSE_FILMS, cause_targets, choose_cause_operating_point
from pneumoscan.onboarding.operating_point import choose_operating_point
from pneumoscan.preprocessing import Preprocessing
from pneumoscan.gate.reference import MIN_REFERENCE_VAL
from pneumoscan.onboarding.reference_builder import build_reference
from pneumoscan.inference.scoring import score_cached
from pneumoscan.onboarding.trainset import hash_files, trainset_tensors
from pneumoscan.training.finetune import Parent, fine_tuning_record, merge_trainset

log = logging.getLogger(__name__)

__all__ = ["finalize_run"]


def finalize_run(cfg: Config, path: Path, cache: ImageCache, tr_rows: np.ndarray, va_rows: np.ndarray,
                 spec: Preprocessing, device: torch.device, *, parent: Parent | None = None,
                 site: dict[str, Any] | None = None, validation: dict[str, Any] | None = None) -> None:
    """With the best weights, fit the temperature and choose the operating threshold on VALIDATION, build the
    scope/drift reference (training-film features, cut-off on validation), hash the training and validation
    films' decoded pixels (:mod:`pneumoscan.onboarding.trainset`), then re-save best.safetensors with ``operating_point``,
    ``calibration``, ``val_summary``, ``reference`` and ``trainset`` (``path`` is the run's best.safetensors), and
    write val_scores.csv beside it.

    Fine-tuning (``parent``, ``site`` from :func:`~.finetune.check_site_films`): the same rules on the site's
    validation split; the reference is a *site* reference; the cause output keeps the parent's operating point when
    the site's validation films name no cause of either kind; ``trainset`` is the union with the parent's; and the
    metadata gains ``fine_tuning`` (:func:`~.finetune.fine_tuning_record`) and ``site_state: "fine-tuned"``."""
    ckpt = load_checkpoint(path)
    model = create_model(cfg.model.name, pretrained=False, dropout=cfg.model.dropout,
                         num_classes=len(ckpt.info.outputs)).to(device)
    model.load_state_dict(ckpt.state_dict)
    logits = score_cached(model, cache.images, va_rows, spec, batch_size=cfg.train.batch_size * 2, device=device, logits=True)
    records = [cache.records[i] for i in va_rows]
    extra, probs = choose_operating_point(records, logits, cfg.eval)
    if ckpt.info.has_cause:
        known = cause_targets([cache.records[i] for i in va_rows])
        few = min(int((known == 0).sum()), int((known == 1).sum())) < MIN_CAUSE_FILMS
        if parent is not None and few and parent.ckpt.info.cause:
            extra["cause"] = {**parent.ckpt.info.cause, "rechosen": False,
                              "note": f"the parent's operating point: the site's validation films named fewer than "
                                      f"{MIN_CAUSE_FILMS} of each cause ({int((known == 0).sum())} bacterial, "
                                      f"{int((known == 1).sum())} viral), too few to choose it again"}
            log.warning("cause output: %s", extra["cause"]["note"])
        else:
            extra["cause"] = _cause_point(cfg, model, cache, va_rows, spec, device)
    tensors: dict[str, torch.Tensor] = {}
    if len(va_rows) >= MIN_REFERENCE_VAL:
        source = f"{cfg.data.root} (split {cfg.data.split or '-'})"
        if cfg.data.val:
            source += f"; validation {cfg.data.val}" + (f" (split {cfg.data.val_split})" if cfg.data.val_split else "")
        ref = build_reference(model, cache.images, tr_rows, va_rows, spec, batch_size=cfg.train.batch_size * 2,
                              device=device, seed=cfg.train.seed, source=source,
                              labels=np.array([r.label for r in cache.records]))
        if parent is not None:  # the features moved: the scope and drift checks compare with the site's films
            ref.info.update({"kind": "site", "source": f"site films given to fine-tuning: {source}"})
        extra["reference"], tensors = ref.to_meta(), ref.to_tensors()
    else:
        log.warning("only %d validation images: no scope/drift reference is stored (it needs %d); predictions "
                    "will be gated on DICOM metadata and pixel statistics only", len(va_rows), MIN_REFERENCE_VAL)
    extra["trainset"], hashes = _trainset(cfg, cache, tr_rows, va_rows)
    if parent is not None:
        hashes = merge_trainset(parent, hashes)
        extra["trainset"].update({"n_train": int(hashes["trainset.train"].numel()),
                                  "n_val": int(hashes["trainset.val"].numel()), "includes_parent": True})
        everything = np.concatenate([tr_rows, va_rows])
        extra["fine_tuning"] = fine_tuning_record(
            cfg, parent, site or {}, n_train=len(tr_rows), n_val=len(va_rows),
            n_pneumonia=int(cache.labels[everything].sum()),
            n_patients=len({cache.records[i].patient_id for i in everything}), validation=validation or {})
        extra["site_state"] = "fine-tuned"
    save_checkpoint(path, ckpt.state_dict, {**ckpt.meta, **extra}, extra={**tensors, **hashes})
    write_scores_csv(path.parent / "val_scores.csv", records, probs)
    op = extra["operating_point"]
    log.info("operating threshold %.4f (validation sensitivity %.3f, specificity %.3f), temperature %.3f",
             op["threshold"], op["val_sensitivity"], op["val_specificity"], extra["calibration"]["temperature"])


def _cause_point(cfg: Config, model: torch.nn.Module, cache: ImageCache, va_rows: np.ndarray, spec: Preprocessing,
                 device: torch.device) -> dict[str, Any]:
    """The cause output's operating point and temperature, chosen on the validation films whose cause is known."""
    targets = cause_targets([cache.records[i] for i in va_rows])
    rows = va_rows[targets >= 0]
    z = score_cached(model, cache.images, rows, spec, batch_size=cfg.train.batch_size * 2, device=device,
                     logits=True, column=1)
    cause = choose_cause_operating_point(
        z, targets[targets >= 0], [cache.records[i].patient_id for i in rows], seed=cfg.eval.bootstrap_seed,
        n_resamples=cfg.eval.bootstrap_samples,
        method=f"trained jointly with the pneumonia output (cause loss weight {cfg.train.cause_weight:g}, viral "
               "films weighted n_bacterial / n_viral)")
    log.info("cause output: validation AUC %.4f, threshold %.4f, temperature %.3f", cause["val"]["auc"]["value"],
             cause["threshold"], cause["temperature"])
    return cause


def _trainset(cfg: Config, cache: ImageCache, tr_rows: np.ndarray,
              va_rows: np.ndarray) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The content hashes of the films the model trained and validated on (the ``trainset.*`` tensors, so that
    ``calibrate``, ``adapt`` and ``evaluate`` know them under any name) and a summary for the metadata.

    The hash is over the decoded full-size image, not the cached square, so each file is read once more."""
    t0 = time.perf_counter()
    train = hash_files([cache.records[i].path for i in tr_rows], workers=cfg.data.num_workers)
    val = hash_files([cache.records[i].path for i in va_rows], workers=cfg.data.num_workers)
    tensors = trainset_tensors(train, val)
    both = set(tensors["trainset.train"].tolist()) & set(tensors["trainset.val"].tolist())
    if both:
        log.warning("%d training film(s) have the same pixels as a validation film (copies under other names?): "
                    "validation overrates this model", len(both))
    summary = {"n_train": int(tensors["trainset.train"].numel()), "n_val": int(tensors["trainset.val"].numel()),
               "n_on_both_sides": len(both), "unreadable": sum(h is None for h in train + val)}
    log.info("hashed %d training and %d validation films in %.1f s", summary["n_train"], summary["n_val"],
             time.perf_counter() - t0)
    return summary, tensors
