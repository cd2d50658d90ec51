"""What a training run learns from: the split of the data set (seeded by patient, or the user's own validation
set, ``data.val``), the decoded-image cache, the rows of it that train and validate, and the order in which each
rank visits the training rows in each epoch."""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DistributedSampler, WeightedRandomSampler

from pneumoscan.config import Config
from pneumoscan.constants import DEFAULT_CACHE_DIR
from pneumoscan.data import DatasetIndex, ImageCache, build_cache, index_dataset, split_index, write_manifest
from pneumoscan.data.dataset import split_with_validation
from pneumoscan.errors import ConfigError
from pneumoscan.models import default_preprocessing, has_pretrained
from pneumoscan.onboarding.cause import cause_targets
from pneumoscan.training.distributed import Dist
from pneumoscan.training.finetune import Parent, check_site_films
from pneumoscan.utils import atomic_write_text, csv_safe_text

log = logging.getLogger(__name__)

__all__ = ["FAILED_IMAGES", "RunData", "cause_config", "effective_config", "epoch_order", "prepare_data", "split_data", "write_failed_images"]

#: The run folder's list of images that could not be decoded (only when there are some).
FAILED_IMAGES = "failed_images.csv"


@dataclass
class RunData:
    """The cached images and which of their rows train and which validate."""

    cache: ImageCache
    train_rows: np.ndarray
    val_rows: np.ndarray
    labels: np.ndarray  # int64 label (1 = pneumonia) of every cache row
    #: How the validation rows were chosen (the checkpoint's ``validation`` metadata): ``source`` is
    #: ``"seeded patient split"`` (with ``seed``, ``fraction``) or ``"user"`` (with ``path``, ``split``,
    #: ``moved_from_training``); both with ``n_images`` and ``n_patients``.
    validation: dict[str, Any] = field(default_factory=dict)
    #: int64 cause target of every cache row (:func:`pneumoscan.onboarding.cause.cause_targets`: 1 viral,
    #: 0 bacterial, -1 unknown or NORMAL).
    causes: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    #: Fine-tuning only: the site films checked against the parent's
    #: (:func:`pneumoscan.training.finetune.check_site_films`).
    site: dict[str, Any] = field(default_factory=dict)

    @property
    def train_labels(self) -> np.ndarray:
        return self.labels[self.train_rows]

    @property
    def n_pos(self) -> int:
        return int(self.train_labels.sum())

    @property
    def n_neg(self) -> int:
        return int((1 - self.train_labels).sum())


def prepare_data(cfg: Config, run_dir: Path, d: Dist, *, parent: Parent | None = None) -> RunData:
    """Index, split (:func:`split_data`) and cache (rank 0 writes split.csv and failed_images.csv and builds the
    cache; the other ranks wait for it and map it). Raises :class:`ConfigError` when either split would be empty,
    the training rows lack a class, or a given validation set (``data.val``) does. Fine-tuning (``parent``): the
    images are made as the parent's preprocessing says, and films the parent trained on are refused
    (:func:`~pneumoscan.training.finetune.check_site_films`, :class:`~pneumoscan.errors.DatasetError`)."""
    train_idx, val_idx, validation = split_data(cfg)
    cache_dir = Path(cfg.data.cache_dir or DEFAULT_CACHE_DIR)
    records = list(train_idx.records) + list(val_idx.records)
    site = check_site_films(parent, records, run_dir, d.main, cfg.data.num_workers) if parent is not None else {}
    spec = parent.spec if parent is not None else default_preprocessing(cfg.model.name, cfg.model.image_size)
    if d.main:
        write_manifest(run_dir / "split.csv", records, ["train"] * len(train_idx) + ["val"] * len(val_idx))
        cache = build_cache(records, spec, cache_dir, max_pixels=cfg.data.max_pixels,
                            num_workers=cfg.data.num_workers, progress=True)
        d.barrier()
    else:
        d.barrier()  # rank 0 built the cache; this call finds it valid and only maps it
        cache = build_cache(records, spec, cache_dir, max_pixels=cfg.data.max_pixels,
                            num_workers=cfg.data.num_workers, progress=False, log_failures=False)
    val_paths = {r.path for r in val_idx.records}
    is_val = np.array([r.path in val_paths for r in cache.records], dtype=bool)
    tr, va = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    if cfg.train.max_train_images and len(tr) > cfg.train.max_train_images:
        rng = np.random.default_rng(cfg.train.seed)
        tr = np.sort(rng.choice(tr, cfg.train.max_train_images, replace=False))
    if d.main:
        write_failed_images(run_dir / FAILED_IMAGES, cache.failures)
    if cache.failures and d.main:
        log.warning("%d image(s) could not be decoded and were left out (named above; all in %s)",
                    len(cache.failures), run_dir / FAILED_IMAGES)
    validation = {**validation, "n_images": len(va),
                  "n_patients": len({cache.records[i].patient_id for i in va})}
    data = RunData(cache, tr, va, cache.labels.astype(np.int64), validation, cause_targets(cache.records), site)
    if data.n_pos == 0 or data.n_neg == 0:
        raise ConfigError("the training split needs images of both classes")
    if cfg.data.val and len(np.unique(data.labels[va])) < 2:
        raise ConfigError(f"{cfg.data.val}: the validation set needs images of both classes (NORMAL and PNEUMONIA) "
                          "to rank epochs by AUC and to choose the threshold")
    log.info("train: %d images (%d pneumonia), val: %d images", len(tr), data.n_pos, len(va))
    return data


def effective_config(cfg: Config) -> Config:
    """``cfg`` as it will run: ``model.pretrained`` means "start from pretrained weights where the model has
    them", so a model without any (seed-cnn, deep-cnn) trains from scratch, says so, and the run's config and
    checkpoints record ``pretrained = false``, which is what happened (and what ``--resume`` then reads)."""
    if cfg.model.pretrained and cfg.train.init_from:  # the weights come from the parent
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=False))
    if cfg.model.pretrained and not has_pretrained(cfg.model.name):
        log.warning("%s has no pretrained weights: training from scratch", cfg.model.name)
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=False))
    return cfg


def cause_config(cfg: Config, run_dir: Path, data: RunData, d: Dist) -> Config:
    """``cfg`` as it will run once the data are known: a cause output needs training films of both causes, and
    validation films of both to choose its operating point; without them the run trains the pneumonia output
    alone, says why, and records ``model.cause_head = false`` (what happened)."""
    if not cfg.model.cause_head:
        return cfg
    tr, va = data.causes[data.train_rows], data.causes[data.val_rows]
    missing = [f"{side} films of a known {name} cause" for side, c in (("training", tr), ("validation", va))
               for code, name in ((0, "bacterial"), (1, "viral")) if not (c == code).any()]
    if not missing:
        return cfg
    if cfg.train.init_from:  # the parent's outputs are kept: its cause output learns from what there is
        log.warning("no %s: the cause output keeps what the parent learned%s", " and no ".join(missing),
                    "" if (va >= 0).any() and len(np.unique(va[va >= 0])) == 2 else
                    ", and its operating point stays the parent's")
        return cfg
    log.warning("no %s (a PNEUMONIA film's cause comes from its name: personN_bacteria_M or personN_virus_M, or a "
                "manifest's cause column): training without the cause output", " and no ".join(missing))
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, cause_head=False))
    if d.main:
        atomic_write_text(run_dir / "config.json", cfg.to_json() + "\n")
    return cfg


def split_data(cfg: Config) -> tuple[DatasetIndex, DatasetIndex, dict[str, Any]]:
    """Index ``cfg.data.root`` and split it into (train, validation): by the user's validation set when
    ``cfg.data.val`` names one (an image in both validates only; a patient in both raises
    :class:`~pneumoscan.errors.DatasetError`), else by the seeded patient-level split. The third item says how
    (see :attr:`RunData.validation`; image and patient counts are added once the images are decoded).

    Raises :class:`ConfigError` when there is no data or either side would be empty."""
    if not cfg.data.root:
        raise ConfigError("no training data: pass --data PATH or set data.root / $PNEUMOSCAN_DATA")
    index = index_dataset(cfg.data.root, split=cfg.data.split or None, check=False, max_pixels=cfg.data.max_pixels)
    if not cfg.data.val:
        train_idx, val_idx = split_index(index, cfg.data.val_fraction, cfg.data.split_seed)
        if len(val_idx) == 0 or len(train_idx) == 0:
            raise ConfigError(f"{cfg.data.root}: too few patients to split into train and validation")
        return train_idx, val_idx, {"source": "seeded patient split", "seed": cfg.data.split_seed,
                                    "fraction": cfg.data.val_fraction}
    given = index_dataset(cfg.data.val, split=cfg.data.val_split or None, check=False, max_pixels=cfg.data.max_pixels)
    train_idx, val_idx, moved = split_with_validation(index, given)
    if moved:
        log.warning("%d image(s) of the training data are also in the validation set (%s) and were left out of "
                    "training, e.g. %s", len(moved), cfg.data.val, ", ".join(moved[:3]))
    if len(train_idx) == 0:
        raise ConfigError(f"{cfg.data.root}: no training images left: all of them are in the validation set "
                          f"{cfg.data.val}")
    unnamed = sum(r.patient_id.startswith("file:") for r in val_idx.records)
    if unnamed:
        log.warning("%d validation image(s) name no patient (file name not parsed, no patient_id column): they "
                    "could not be checked against the training patients", unnamed)
    log.info("validation: the %d image(s) of %s (given), not a seeded split", len(val_idx), cfg.data.val)
    return train_idx, val_idx, {"source": "user", "path": os.path.abspath(cfg.data.val),
                                "split": cfg.data.val_split or None, "moved_from_training": len(moved)}


def write_failed_images(path: Path, failures: Sequence[tuple[str, str]]) -> None:
    """``path,reason`` of every image the cache left out, written atomically; removed when there are none
    (a resumed run over repaired data must not keep an old list)."""
    if not failures:
        path.unlink(missing_ok=True)
        return
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "reason"])
    writer.writerows([csv_safe_text(path), csv_safe_text(reason)] for path, reason in failures)
    atomic_write_text(path, buf.getvalue())


def epoch_order(n: int, labels: np.ndarray, cfg: Config, epoch: int, d: Dist) -> np.ndarray:
    """Indices (into the ``n`` train rows, whose labels are ``labels``) that this rank visits in ``epoch``; every
    rank gets the same count. A pure function of (``train.seed``, ``epoch``, rank): torch's global generator is
    not touched."""
    seed = cfg.train.seed
    if cfg.train.balanced_sampler:
        counts = np.bincount(labels, minlength=2).astype(np.float64)
        weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = np.fromiter(iter(WeightedRandomSampler(weights, n, replacement=True, generator=g)), dtype=np.int64)
        per_rank = n // d.world
        return order[d.rank : per_rank * d.world : d.world]
    sampler = DistributedSampler(range(n), num_replicas=d.world, rank=d.rank, shuffle=True, seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    return np.fromiter(iter(sampler), dtype=np.int64)
