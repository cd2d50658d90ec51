"""Building the reference the scope gate and the drift check compare with (:mod:`pneumoscan.gate.reference`):
from the model's own pooled features of a seeded sample of its training films (the bank) and of its held-out
validation films (the cut-off and the drift null), at the end of training, by ``adapt`` for a site, or afterwards
for a model that predates references (``scripts/build_reference.py``).

Every reference built here carries the drift check's null distribution, computed once
(:func:`with_drift_null`, :mod:`pneumoscan.gate.drift_null`), so that no run of ``predict`` or the server
resamples it."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumoscan.checkpoint import load_checkpoint, save_checkpoint
from pneumoscan.constants import DEFAULT_CACHE_DIR
from pneumoscan.data import build_cache, model_split
from pneumoscan.gate.drift import MIN_IMAGES, DriftCheck
from pneumoscan.gate.reference import (
    MIN_REFERENCE_VAL,
    Reference,
    intensity_descriptors,
    knn_distance,
    l2_normalize,
    midpoint_cut,
)
from pneumoscan.preprocessing import Preprocessing

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["attach_drift_null", "attach_reference", "build_reference", "label_reference", "with_drift_null"]

log = logging.getLogger(__name__)


def with_drift_null(ref: Reference, **check: Any) -> Reference:
    """``ref`` as a checkpoint stores it (arrays through float16), with the drift check's null table
    (:meth:`pneumoscan.gate.drift.DriftCheck.null_table`; ``check``: the check's parameters, ``alpha``,
    ``n_resamples``..., by default those the predictor uses) under ``drift_null``; without one (``drift_null``
    None) when its validation films are too few for a drift check."""
    stored = ref.as_stored()
    stored.drift_null = None
    if len(stored.val_features) < 2 * MIN_IMAGES:
        log.info("no drift null table: %d validation films (a drift check needs %d)", len(stored.val_features),
                 2 * MIN_IMAGES)
        return stored
    stored.drift_null = DriftCheck(stored, **check).null_table()
    log.info("drift null table: %d batch sizes x %d mixes in %.1f s", len(stored.drift_null["sizes"]),
             stored.drift_null["n_mixes"], stored.drift_null["seconds"])
    return stored


def build_reference(model: nn.Module, images: np.ndarray, train_rows: np.ndarray, val_rows: np.ndarray,
                    spec: Preprocessing, *, bank_size: int = 2048, knn_k: int = 5, max_val_flag_rate: float = 0.01,
                    seed: int = 0, batch_size: int = 64, device: torch.device | str = "cpu",
                    source: str = "", labels: np.ndarray | None = None, drift_null: bool = True) -> Reference:
    """Build the reference from the decoded-image cache (``images``) and the split's row indices.

    ``bank_size`` training films (a seeded sample) form the bank; the cut-off (:func:`midpoint_cut`) leaves at
    most ``max_val_flag_rate`` of the validation films above it. ``labels``: 0/1 per row of ``images``
    (1 = pneumonia), kept for the bank and validation films so that the drift check can tell a change of case mix
    from a change of acquisition (:mod:`pneumoscan.gate.drift`); None for unlabelled films. The arrays come back as
    the checkpoint stores them (float16 precision) and, with ``drift_null``, with the drift check's null table
    (:func:`with_drift_null`).
    """
    from pneumoscan.inference.torch_scoring import features_cached

    if len(val_rows) < MIN_REFERENCE_VAL:
        raise ValueError(f"the reference needs at least {MIN_REFERENCE_VAL} validation films to choose its cut-off, "
                         f"got {len(val_rows)}")
    rng = np.random.default_rng(seed)
    bank_rows = np.sort(rng.choice(train_rows, min(bank_size, len(train_rows)), replace=False))
    _, bank_f = features_cached(model, images, bank_rows, spec, batch_size=batch_size, device=device)
    _, val_f = features_cached(model, images, np.asarray(val_rows), spec, batch_size=batch_size, device=device)
    bank = l2_normalize(bank_f).astype(np.float16).astype(np.float32)  # as stored
    val_scores = knn_distance(val_f, bank, knn_k)
    cut = midpoint_cut(val_scores, max_val_flag_rate)
    info = {"n_bank": int(len(bank_rows)), "n_val": int(len(val_rows)), "n_train_images": int(len(train_rows)),
            "val_flag_rate": float(np.mean(val_scores > cut)), "max_val_flag_rate": float(max_val_flag_rate),
            "method": f"cosine distance to the {knn_k}th nearest training film in the model's pooled features",
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "source": source, "seed": int(seed)}
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if len(labels) != len(images) or not np.isin(labels, (0, 1)).all():
            raise ValueError(f"labels must be 0/1, one per image ({len(images)}), got {len(labels)} values")
        labels = labels.astype(np.int8)
    ref = Reference(bank=bank, val_features=l2_normalize(val_f), knn_k=knn_k, knn_cut=cut, info=info,
                    bank_descriptors=intensity_descriptors(np.asarray(images[bank_rows])),
                    val_descriptors=intensity_descriptors(np.asarray(images[np.asarray(val_rows)])),
                    bank_labels=None if labels is None else labels[bank_rows],
                    val_labels=None if labels is None else labels[np.asarray(val_rows)])
    return with_drift_null(ref) if drift_null else ref.as_stored()


def attach_reference(checkpoint: str | os.PathLike[str], data: str | os.PathLike[str], out: str | os.PathLike[str], *,
                     split: str | None = None, cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR,
                     bank_size: int = 2048, seed: int = 0, device: str = "auto") -> Reference:
    """Add a reference to a model trained before references existed, without retraining it.

    The model's own patient-level split is rebuilt from its stored config (``data.split``, ``data.val_fraction``,
    ``data.split_seed``) over ``data`` (the folder it was trained on), so the bank comes from its training films
    and the cut-off from its validation films. Writes ``out`` with the same weights and metadata plus the reference
    and the content hashes of its training and validation films (:mod:`pneumoscan.onboarding.trainset`).

    Raises:
        DatasetError: the data cannot be indexed or split.
        ValueError: ``out`` is the source file (write a new file and swap it in deliberately).
    """
    from pneumoscan.inference.torch_scoring import model_from_checkpoint, resolve_device
    from pneumoscan.onboarding.trainset import split_hashes

    src, dst = Path(checkpoint), Path(out)
    if dst.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"{dst}: write the checkpoint with its reference to a new file, not over its source")
    ckpt = load_checkpoint(src)
    info = ckpt.info
    data_cfg = info.config.get("data") or {}
    train_idx, val_idx = model_split(data, data_cfg, split=split)
    records = list(train_idx.records) + list(val_idx.records)
    cache = build_cache(records, info.preprocessing, cache_dir, progress=False)
    val_paths = {r.path for r in val_idx.records}
    is_val = np.array([r.path in val_paths for r in cache.records], dtype=bool)
    device_ = resolve_device(device)
    model = model_from_checkpoint(ckpt).to(device_)
    ref = build_reference(model, cache.images, np.flatnonzero(~is_val), np.flatnonzero(is_val), info.preprocessing,
                          bank_size=bank_size, seed=seed, device=device_,
                          source=f"{Path(str(data)).name} (split {data_cfg.get('split') or '-'}, seed "
                                 f"{data_cfg.get('split_seed', 42)})",
                          labels=np.array([r.label for r in cache.records]))
    hashes = split_hashes(ckpt, data, split=split)  # the films it trained on, by content (pneumoscan.onboarding.trainset)
    save_checkpoint(dst, ckpt.state_dict, {**ckpt.meta, "reference": ref.to_meta()},
                    extra={**ckpt.extra, **ref.to_tensors(), **hashes})
    return ref


def label_reference(checkpoint: str | os.PathLike[str], data: str | os.PathLike[str], out: str | os.PathLike[str], *,
                    split: str | None = None, cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR,
                    tol: float = 2e-3) -> Reference:
    """Add the 0/1 labels of a stored reference's films to a model whose reference predates them, changing nothing
    else (the arrays, the cut-off and the weights stay as they are).

    Each stored film is found again in the model's own split over ``data`` by its intensity descriptors (stored as
    float16; a film matches when all seven agree within ``tol``), training films for the bank and validation films
    for the validation set; a film with no match, or with matches of both labels, is an error. Writes ``out``
    (a new file, with its JSON copy beside it).

    Raises:
        ValueError: ``out`` is the source file; the checkpoint carries no reference; a film cannot be matched.
    """
    src, dst = Path(checkpoint), Path(out)
    if dst.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"{dst}: write the labelled checkpoint to a new file, not over its source")
    ckpt = load_checkpoint(src)
    ref = Reference.from_checkpoint_parts(ckpt.extra, ckpt.meta.get("reference"))
    if ref is None:
        raise ValueError(f"{src}: the model carries no reference to label (build one with scripts/build_reference.py)")
    train_idx, val_idx = model_split(data, ckpt.info.config.get("data") or {}, split=split)
    labels = {}
    for name, idx, stored in (("bank", train_idx, ref.bank_descriptors), ("val", val_idx, ref.val_descriptors)):
        cache = build_cache(list(idx.records), ckpt.info.preprocessing, cache_dir, progress=False)
        found = intensity_descriptors(np.asarray(cache.images[: len(cache)])).astype(np.float16).astype(np.float32)
        y = np.array([r.label for r in cache.records], dtype=np.int8)
        out_labels = np.empty(len(stored), dtype=np.int8)
        for i, d in enumerate(np.asarray(stored, dtype=np.float32)):
            match = np.flatnonzero(np.abs(found - d).max(axis=1) <= tol)
            if match.size == 0 or len(set(y[match].tolist())) != 1:
                raise ValueError(f"{src}: reference {name} film {i} matches {match.size} film(s) of {data} "
                                 f"{'with both labels' if match.size else ''}; is this the data it was trained on?")
            out_labels[i] = y[match[0]]
        labels[name] = out_labels
    ref.bank_labels, ref.val_labels = labels["bank"], labels["val"]
    ref = with_drift_null(ref)  # the labels change the null (it is then adjusted for the mix of cases)
    meta_ref = {**{k: v for k, v in ckpt.meta["reference"].items() if k != "drift_null"}, **ref.to_meta(),
                "labels": "0/1 per film (1 = pneumonia), added by label_reference: films matched by their intensity "
                "descriptors in the model's own split"}
    save_checkpoint(dst, ckpt.state_dict, {**ckpt.meta, "reference": meta_ref}, extra=ckpt.extra)
    return ref


def attach_drift_null(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str]) -> Reference:
    """Add (or compute again) the drift check's null table of a model's stored reference, changing nothing else:
    the weights, the other tensors, the reference's arrays and cut-offs, and the rest of the metadata stay as they
    are. Writes ``out`` (a new file, with its JSON copy beside it). Needs no data and no torch model.

    Raises:
        ValueError: ``out`` is the source file; the checkpoint carries no reference, or one too small for a drift
            check.
    """
    src, dst = Path(checkpoint), Path(out)
    if dst.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"{dst}: write the checkpoint with its drift null to a new file, not over its source")
    ckpt = load_checkpoint(src)
    ref = Reference.from_checkpoint_parts(ckpt.extra, ckpt.meta.get("reference"))
    if ref is None:
        raise ValueError(f"{src}: the model carries no reference (build one with scripts/build_reference.py)")
    ref = with_drift_null(ref)
    if ref.drift_null is None:
        raise ValueError(f"{src}: its reference holds {len(ref.val_features)} validation films; a drift check needs "
                         f"{2 * MIN_IMAGES}")
    meta_ref = {**ckpt.meta["reference"], "drift_null": ref.drift_null}
    save_checkpoint(dst, ckpt.state_dict, {**ckpt.meta, "reference": meta_ref}, extra=ckpt.extra)
    return ref
