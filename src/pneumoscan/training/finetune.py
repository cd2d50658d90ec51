"""Fine-tuning on a site's labels, the third rung after ``adapt`` and ``calibrate``: ``pneumoscan train --init-from
MODEL --data SITE``.

The run is an ordinary training run (:func:`pneumoscan.training.train`, resumable, the same run folder) that starts
from a parent checkpoint instead of ImageNet weights:

* **What the parent fixes.** Everything that shapes the network or its input: ``model.name``, ``model.image_size``,
  ``model.cause_head`` (its outputs) and the preprocessing (read from the parent's metadata, not rebuilt). A run
  that asks for another value raises :class:`~pneumoscan.errors.ConfigError` naming the key. The cause output is
  kept even when the site's films name no cause; when its validation split names fewer than 10 films of
  either cause, its operating point is the parent's (and says so).
* **What starts from the parent's recipe, and may be changed** (``--set``): the augmentation (``augment.*``),
  the rules that choose the threshold and temperature (``eval.*``), dropout, and the optimisation, with
  fine-tuning defaults (:data:`FINETUNE_DEFAULTS`): a tenth of the parent's learning rate (1e-4 for the
  shipped model), 5 epochs, patience 3, EMA warm-up on (a slow average without it would keep most of the parent's
  weights after the few steps a site's films give), and 30 % of the site's patients for validation (a site
  folder is small, and that split chooses the epoch, the threshold and the temperature).
* **The site's films.** The folder layouts ``train`` accepts (``--data``, ``--split``, ``--val``); the validation
  split is by patient. Films the parent TRAINED on (by decoded-pixel content, the parent's ``trainset.train``
  hashes) are **refused**, not dropped: they are not the site's films, so a folder holding them was assembled
  wrongly (e.g. merged with the public data set), and its summary, case mix and scope reference would describe a
  mix rather than the site; in the validation split they would flatter the numbers. The error names how many
  and which, and lists them all in the run folder's ``parent_training_films.csv``. Films of the parent's
  validation set are allowed and counted (the parent chose its epoch on them; it did not learn from them).
* **What the checkpoint records.** ``fine_tuning`` (:func:`fine_tuning_record`: the parent's identity and SHA-256,
  its site state, the site data summary, the recipe), ``site_state: "fine-tuned"``, the threshold and temperature
  chosen on the site's validation split by the rules ``train`` uses, a *site* scope/drift reference (the site's
  training films as the bank, its validation films for the cut-off), and as ``trainset.*`` the union of the
  parent's and the site's films (so a later ``calibrate``, ``adapt`` or ``evaluate`` refuses or flags both).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pneumoscan import __version__
from pneumoscan.checkpoint import Checkpoint, load_checkpoint
from pneumoscan.config import Config, apply_overrides
from pneumoscan.data import Record
from pneumoscan.errors import CheckpointError, ConfigError, DatasetError
from pneumoscan.inference.provenance import provenance_line, site_state
from pneumoscan.onboarding.trainset import TENSOR_PREFIX, hash_files, image_set_sha256, overlap
from pneumoscan.preprocessing import Preprocessing
from pneumoscan.utils import atomic_write_text, csv_safe_text, file_sha256

log = logging.getLogger(__name__)

__all__ = ["FINETUNE_DEFAULTS", "PARENT_FILMS", "PARENT_JSON", "Parent", "check_site_films", "finetune_config",
           "fine_tuning_record", "load_parent", "merge_trainset"]

#: Fine-tuning defaults applied over the parent's stored recipe, before the user's ``--set`` overrides. The
#: learning rate default is a tenth of the parent's (see :func:`finetune_config`).
FINETUNE_DEFAULTS: dict[str, Any] = {
    "train.epochs": 5, "train.patience": 3, "train.ema_warmup": True, "train.max_train_images": 0,
    "data.val_fraction": 0.3, "data.split_seed": 42, "data.val": "", "data.val_split": "", "data.split": "",
    "data.root": "", "model.pretrained": False,
}
#: The keys the parent fixes: they shape the network (its weights would not fit) or its outputs.
PARENT_KEYS = ("name", "image_size", "cause_head")
#: Run-folder files: the parent's identity (checked on ``--resume``), and the films refused as the parent's.
PARENT_JSON = "parent.json"
PARENT_FILMS = "parent_training_films.csv"


@dataclass(frozen=True)
class Parent:
    """The checkpoint a fine-tuning run starts from, read once."""

    path: Path
    sha256: str
    ckpt: Checkpoint

    @property
    def spec(self) -> Preprocessing:
        return self.ckpt.info.preprocessing

    @property
    def model_values(self) -> dict[str, Any]:
        """The parent's values of :data:`PARENT_KEYS`."""
        return {"name": self.ckpt.info.model, "image_size": self.spec.image_size,
                "cause_head": self.ckpt.info.has_cause}


def load_parent(path: str | os.PathLike[str]) -> Parent:
    """Read the parent checkpoint; :class:`CheckpointError` naming the file when it is not a pneumoscan checkpoint
    (an ONNX export carries no trainable weights: give the ``.safetensors`` it came from)."""
    p = Path(path)
    if p.suffix.lower() == ".onnx":
        raise CheckpointError(f"--init-from {p}: an ONNX export cannot be fine-tuned; give the .safetensors "
                              "checkpoint it was exported from")
    ckpt = load_checkpoint(p)
    return Parent(p, file_sha256(p), ckpt)


def _parent_config(parent: Parent) -> dict[str, Any]:
    """The parent's stored config, keeping only keys this version knows (older and newer models load)."""
    raw = parent.ckpt.info.config
    known = Config().to_dict()
    out = {sec: {k: v for k, v in (raw.get(sec) or {}).items() if k in fields}
           for sec, fields in known.items() if isinstance(fields, dict)}
    out["model"].update({"name": parent.ckpt.info.model, "image_size": parent.spec.image_size,
                         "cause_head": parent.ckpt.info.has_cause})
    return out


def finetune_config(init_from: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Config:
    """The config of a fine-tuning run from ``init_from``: the parent's recipe (model, augmentation, eval rules,
    optimiser), then :data:`FINETUNE_DEFAULTS` and a learning rate a tenth of the parent's, then ``overrides``
    (``section.key=value``; ``data.root`` names the site's folder). Raises :class:`ConfigError` when an override
    changes a key the parent fixes (:func:`check_parent_fit`)."""
    parent = load_parent(init_from)
    base = Config.from_dict(_parent_config(parent))
    defaults = dict(FINETUNE_DEFAULTS, **{"train.lr": base.train.lr / 10,
                                          "train.init_from": os.path.abspath(init_from)})
    cfg = apply_overrides(base, [f"{k}={json.dumps(v)}" for k, v in defaults.items()])
    cfg = apply_overrides(cfg, list(overrides))
    check_parent_fit(cfg, parent)
    return cfg


def check_parent_fit(cfg: Config, parent: Parent) -> None:
    """Raise :class:`ConfigError` naming each ``model.*`` key whose value differs from the parent's."""
    wrong = [f"model.{k} = {getattr(cfg.model, k)!r} (the parent's is {v!r})"
             for k, v in parent.model_values.items() if getattr(cfg.model, k) != v]
    if wrong:
        raise ConfigError(
            f"--init-from {parent.path}: fine-tuning keeps the parent's network, input and outputs, but this run "
            f"asks for {'; '.join(wrong)}. Drop those settings (the parent's are used), or train a new model without "
            "--init-from")


def start_or_check_parent(cfg: Config, run_dir: Path, resume: bool, main: bool) -> Parent:
    """Load ``cfg.train.init_from``, check it fits ``cfg``, and record its identity in the run folder; on
    ``resume``, refuse a parent whose content changed since the run started."""
    parent = load_parent(cfg.train.init_from)
    check_parent_fit(cfg, parent)
    record = run_dir / PARENT_JSON
    if resume and record.is_file():
        before = json.loads(record.read_text(encoding="utf-8"))
        if before.get("sha256") != parent.sha256:
            raise ConfigError(f"{parent.path}: this file changed since the run in {run_dir} started from it (SHA-256 "
                              f"{before.get('sha256', '?')[:12]}, now {parent.sha256[:12]}); resume with the same "
                              "parent, or start a new run")
    elif main:
        atomic_write_text(record, json.dumps({"path": str(parent.path), "sha256": parent.sha256}, indent=2) + "\n")
    log.info("fine-tuning from %s (%s, SHA-256 %s)", parent.path, parent.ckpt.info.model, parent.sha256[:12])
    return parent


def load_parent_weights(model: nn.Module, parent: Parent) -> None:
    """Copy the parent's weights into ``model`` (strict: every tensor, same shapes)."""
    try:
        model.load_state_dict(parent.ckpt.state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{parent.path}: its weights do not fit model {parent.ckpt.info.model!r} ({exc})") \
            from exc


def check_site_films(parent: Parent, records: Sequence[Record], run_dir: Path, main: bool,
                     workers: int = 2) -> dict[str, Any]:
    """Refuse the site's films that the parent trained on (by content; see the module docstring): raises
    :class:`DatasetError` with the count and examples, after writing all of them to ``PARENT_FILMS``. Returns
    ``{"checked", "n_in_parent_validation", "n_unreadable", "image_set_sha256"}``."""
    hashes = hash_files([r.path for r in records], workers=max(1, workers))
    seen = overlap(parent.ckpt, hashes)
    if seen.train:
        if main:
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(["path", "label"])
            writer.writerows([csv_safe_text(records[i].path), records[i].label] for i in seen.train)
            atomic_write_text(run_dir / PARENT_FILMS, buf.getvalue())
        examples = ", ".join(records[i].path for i in seen.train[:5])
        raise DatasetError(
            f"{len(seen.train)} of the {len(records)} site films are films the parent model {parent.path} was "
            f"TRAINED on (same decoded pixels), e.g. {examples}; all of them are listed in "
            f"{run_dir / PARENT_FILMS}. They are not this site's films: in the validation split they would flatter "
            "the fine-tuned model's numbers and threshold, and they would blur the site's summary and scope "
            "reference. Remove them from the site's folder and run again")
    if not seen.known:
        log.warning("%s carries no list of its training films: pneumoscan cannot check that the site's films did not "
                    "train it", parent.path)
    if seen.val:
        log.info("%d of the site films are in the parent's validation set (allowed: it chose its epoch on them, it "
                 "did not learn from them)", len(seen.val))
    return {"checked": seen.known, "n_in_parent_validation": len(seen.val),
            "n_unreadable": sum(h is None for h in hashes),
            "image_set_sha256": image_set_sha256([h for h in hashes if h is not None])}


def merge_trainset(parent: Parent, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The fine-tuned model's ``trainset.*`` tensors: what it learned from is the parent's training films and the
    site's; its validation films are the site's and the parent's (minus any it trained on)."""
    out = dict(tensors)
    for role in ("train", "val"):
        name = TENSOR_PREFIX + role
        if name in parent.ckpt.extra:
            both = torch.cat([tensors[name], torch.as_tensor(parent.ckpt.extra[name], dtype=torch.int64)])
            out[name] = torch.unique(both)
    train = set(out[TENSOR_PREFIX + "train"].tolist())
    out[TENSOR_PREFIX + "val"] = torch.tensor(sorted(set(out[TENSOR_PREFIX + "val"].tolist()) - train),
                                              dtype=torch.int64)
    return out


def fine_tuning_record(cfg: Config, parent: Parent, site: dict[str, Any], *, n_train: int, n_val: int,
                       n_pneumonia: int, n_patients: int, validation: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's ``fine_tuning`` metadata: where it came from (parent), on what (the site's films) and how
    (the recipe)."""
    pm = parent.ckpt.meta
    source = f"{cfg.data.root}" + (f" (split {cfg.data.split})" if cfg.data.split else "")
    return {
        "method": "fine-tuned from a parent checkpoint: all weights trained on the site's labelled films, with the "
                  "parent's architecture, preprocessing and outputs",
        "parent_model_sha256": parent.sha256, "parent_model_path": str(parent.path), "parent_model": pm.get("model"),
        "parent_created": pm.get("created"), "parent_site_state": site_state(pm),
        "parent_provenance": provenance_line(pm),
        "parent_operating_point": {"threshold": parent.ckpt.info.threshold,
                                   "temperature": parent.ckpt.info.temperature},
        "data": source, "n_images": n_train + n_val, "n_train_images": n_train, "n_val_images": n_val,
        "n_pneumonia": n_pneumonia, "n_normal": n_train + n_val - n_pneumonia, "n_patients": n_patients,
        "image_set_sha256": site["image_set_sha256"], "validation": validation,
        "n_in_parent_validation_set": site["n_in_parent_validation"], "parent_trainset_checked": site["checked"],
        "recipe": {"train": {k: v for k, v in dataclasses.asdict(cfg.train).items()
                             if k in ("epochs", "lr", "batch_size", "weight_decay", "scheduler", "patience",
                                      "ema_decay", "ema_warmup", "seed", "pos_weight", "balanced_sampler")},
                   "augment": dataclasses.asdict(cfg.augment)},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "pneumoscan_version": __version__,
    }
