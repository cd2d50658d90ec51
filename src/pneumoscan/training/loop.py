"""Training loop: patient-level split (or the user's own validation set, ``data.val``), cached images, batched
augmentation, early stopping on validation AUC, resumable checkpoints and DistributedDataParallel under ``torchrun``.

Run folder layout (written by rank 0 only)::

    config.json          the full frozen config of the run
    metrics.csv          one row per epoch: train/val loss, val AUC, sensitivity and specificity at 0.5
                         (+ val_auc_raw, the raw weights' val AUC, when EMA weight averaging is on)
    timing.json          wall time per epoch (kept out of metrics.csv so that file is reproducible)
    state.safetensors    everything --resume needs, rewritten atomically after every epoch
    best.safetensors     the best checkpoint by validation AUC (+ best.json, a readable copy of its metadata; its
                         ``validation`` says how the validation images were chosen); after the last epoch it gains
                         the operating threshold, temperature, validation summary, scope/drift reference and the
                         content hashes of its training and validation films (``trainset.*``, :mod:`pneumoscan.onboarding.trainset`)
    val_scores.csv       calibrated validation scores of the best checkpoint (path,label,patient_id,cause,score)
    augmentations.png    originals and augmented draws, for a person to check
    loss.png, auc.png    curves, train against validation
    split.csv            the train/validation assignment (seeded by patient, or the given ``data.val``)
    failed_images.csv    path,reason of each image that could not be decoded and was left out (only if any)

:func:`train` runs these steps in order: :func:`_setup_run`, :func:`~.inputs.prepare_data`, :func:`~.inputs.cause_config`, :func:`_build`, then
:func:`_restore` (with ``resume``) or the augmentation preview, then per epoch :func:`_train_epoch`,
:func:`_validate` and :func:`_end_of_epoch`, and at the end :func:`~.finalize.finalize_run`.

Determinism: every epoch reseeds torch's generator from (seed, epoch, rank),
and the batch order comes from a sampler seeded with (seed, epoch). An
interrupted run resumed from its last completed epoch therefore replays
exactly what an uninterrupted run would have done (on the CPU; cuDNN's kernels
are not bit-reproducible).

Speed: the step itself (:mod:`.step`) runs channels-last, under bfloat16 autocast on CUDA, with the batch
augmented on the device (and the decoded cache in GPU memory when it fits); :func:`train` raises glibc's
allocator thresholds first (:mod:`.allocator`), and ``train.compile`` compiles the model.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from pneumoscan import metrics as M
from pneumoscan.checkpoint import load_state, save_checkpoint, save_state
from pneumoscan.config import Config, load_config
from pneumoscan.errors import ConfigError, RunExistsError
from pneumoscan.models import create_model, default_preprocessing
from pneumoscan.preprocessing import Preprocessing
from pneumoscan.inference.scoring import score_cached
from pneumoscan.training.allocator import tune_allocator
from pneumoscan.training.augment import RandAugmentPipeline, build_augmentation, save_augmentation_grid
from pneumoscan.training.distributed import Dist, gather, setup_distributed
from pneumoscan.training.ema import build_ema
from pneumoscan.training.finalize import finalize_run
from pneumoscan.training.finetune import Parent, load_parent_weights, start_or_check_parent
from pneumoscan.training.inputs import RunData, cause_config, effective_config, epoch_order, prepare_data
from pneumoscan.training.records import CAUSE_AUC_COLUMN, RAW_AUC_COLUMN, checkpoint_meta, plot_curves, write_metrics_csv, write_timing
from pneumoscan.training.step import (BatchSource, CauseLoss, EpochTally, StepOptions, batches, compile_model,
                                      model_input, prepare_model, restore_optimizer_layout, step_options, train_step)
from pneumoscan.utils import atomic_write_text, remove_stale_temps, seed_everything

log = logging.getLogger(__name__)

__all__ = ["RunExistsError", "TrainResult", "load_run_config", "resume", "train"]

STATE = "state.safetensors"
BEST = "best.safetensors"
Callback = Callable[[str, dict[str, Any]], None]


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path
    best_epoch: int
    best_val_auc: float
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    #: The parent checkpoint a fine-tuning run started from (``train.init_from``); empty otherwise.
    fine_tuned_from: str = ""


@dataclass
class _Parts:
    """What trains: the model and everything that updates or feeds it."""

    spec: Preprocessing
    model: nn.Module
    pos_weight: torch.Tensor  # shape (1,), on the training device
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    ema: AveragedModel | None
    aug: RandAugmentPipeline
    opts: StepOptions  # device, channels-last, autocast
    source: BatchSource  # training batches, delivered on the device

    @property
    def eval_model(self) -> nn.Module:
        """The weights that are validated and checkpointed: the average when EMA is on."""
        return self.ema.module if self.ema is not None else self.model


@dataclass
class _Progress:
    """Where the run stands; saved in ``state.safetensors`` after every epoch."""

    history: list[dict[str, Any]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"auc": -math.inf, "epoch": 0})
    bad_epochs: int = 0
    stopped: bool = False
    start_epoch: int = 1


# --- steps before the first epoch ---------------------------------------------------------------------


def _setup_run(cfg: Config, run_dir: Path, resume: bool) -> tuple[Config, Dist]:
    """Effective config, distributed setup, the run folder with its config.json, threads and the seed."""
    cfg = effective_config(cfg)
    d = setup_distributed(cfg.train.device)
    if not resume and ((run_dir / STATE).exists() or (run_dir / BEST).exists()):
        raise RunExistsError(f"{run_dir}: already holds a training run; resume it with --resume or choose another --out")
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(run_dir)  # left by a killed run (SIGKILL leaves no chance to clean up)
        atomic_write_text(run_dir / "config.json", cfg.to_json() + "\n")
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    tune_allocator()  # before the first step allocates: freed activations are reused, not page-faulted in again
    seed_everything(cfg.train.seed)  # train() is an entry point: model initialisation depends on it
    return cfg, d


def _build(cfg: Config, data: RunData, d: Dist, parent: Parent | None = None) -> _Parts:
    """Model (initialised from torch's generator, or the ``parent``'s weights when fine-tuning; on the device,
    channels-last), weighted loss, AdamW, LR schedule, EMA, augmentation and the batch source (the decoded cache,
    on the GPU when it fits)."""
    spec = parent.spec if parent is not None else default_preprocessing(cfg.model.name, cfg.model.image_size)
    opts = step_options(cfg.train, d.device)
    cause = cfg.model.cause_head
    net = create_model(cfg.model.name, pretrained=cfg.model.pretrained, dropout=cfg.model.dropout,
                       num_classes=2 if cause else 1)
    if parent is not None:  # before the EMA copies the weights: the average starts from the parent too
        load_parent_weights(net, parent)
    model = prepare_model(net, opts)
    use_pos_weight = cfg.train.pos_weight and not cfg.train.balanced_sampler
    pos_weight = torch.tensor([data.n_neg / data.n_pos if use_pos_weight else 1.0], device=d.device)
    criterion: nn.Module = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    if cause:  # the cause output: imbalance (about 2:1 bacterial) handled as for the main output
        known = data.causes[data.train_rows]
        n_viral, n_bact = int((known == 1).sum()), int((known == 0).sum())
        cause_pw = torch.tensor([n_bact / n_viral if use_pos_weight and n_viral and n_bact else 1.0], device=d.device)
        criterion = CauseLoss(pos_weight, cause_pw, cfg.train.cause_weight)
        log.info("cause output: %d bacterial and %d viral training films (viral weighted %.2f); %d pneumonia films "
                 "of unknown cause count for the main output only", n_bact, n_viral, float(cause_pw),
                 int(((data.train_labels == 1) & (known < 0)).sum()))
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    if cfg.train.scheduler == "cosine":
        scheduler: Any = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.train.epochs, 1))
    elif cfg.train.scheduler == "none":
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    else:
        raise ConfigError(f"train.scheduler must be 'cosine' or 'none', got {cfg.train.scheduler!r}")
    ema = build_ema(model, cfg.train)
    source = BatchSource(data.cache.images, data.labels, d.device, device_fraction=cfg.train.device_cache_fraction,
                         causes=data.causes if cause else None)
    log.info("training on %s: %s, autocast %s, batches %s", d.device, "channels-last" if opts.channels_last else
             "NCHW", opts.amp or "off", "gathered on the device" if source.on_device else "from host memory")
    return _Parts(spec, model, pos_weight, criterion, optimizer, scheduler, ema, build_augmentation(cfg.augment),
                  opts, source)


def _restore(run_dir: Path, parts: _Parts) -> _Progress:
    """Weights, optimiser, scheduler, EMA, progress and random generators as the last completed epoch left them."""
    st = load_state(run_dir / STATE)
    parts.model.load_state_dict(st["model"])
    parts.optimizer.load_state_dict(st["optimizer"])
    restore_optimizer_layout(parts.optimizer)
    parts.scheduler.load_state_dict(st["scheduler"])
    if parts.ema is not None and "ema" in st:
        parts.ema.load_state_dict(st["ema"])
    prog = _Progress(history=st["history"], times=st["times"], best=st["best"], bad_epochs=st["bad_epochs"],
                     stopped=st["stopped"], start_epoch=int(st["epoch"]) + 1)
    _set_rng_state(st["rng"])
    log.info("resuming %s after epoch %d", run_dir, st["epoch"])
    return prog


def _rng_state() -> dict[str, Any]:
    # The run's own stream, stored for --resume (a checkpoint, not a guard around a side computation: those,
    # like the augmentation preview, draw inside torch.random.fork_rng).
    return {"torch": torch.random.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.random.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *[int(v) if i < 2 else float(v) for i, v in enumerate(np_state[2:])]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


# --- one epoch ----------------------------------------------------------------------------------------


def _train_epoch(cfg: Config, epoch: int, net: nn.Module, parts: _Parts, data: RunData, d: Dist,
                 callbacks: Sequence[Callback], progress: bool) -> dict[str, Any]:
    """One pass over this rank's share of the training rows, then one scheduler step. Returns the epoch's
    ``lr``, ``train_loss``, ``train_auc`` and ``n_train``, reduced over all ranks."""
    torch.manual_seed(cfg.train.seed * 1_000_003 + epoch * 7919 + d.rank)  # augmentation + dropout draws
    order = data.train_rows[epoch_order(len(data.train_rows), data.train_labels, cfg, epoch, d)]
    net.train()
    tally = EpochTally()
    steps = batches(order, cfg.train.batch_size)
    bar = tqdm(steps, desc=f"epoch {epoch}/{cfg.train.epochs}", unit="batch", disable=not (progress and d.main), leave=False)
    for step, rows in enumerate(bar):
        x = model_input(parts.source.images_u8(rows), parts.aug, parts.spec, parts.opts)
        loss, logits = train_step(net, parts.model, parts.criterion, parts.optimizer, parts.ema, x,
                                  parts.source.labels(rows), parts.opts)
        # Train AUC from the augmented training-mode predictions: cheap, and enough to see over-fitting.
        tally.add(loss, logits, data.labels[rows])
        if not bar.disable and (step % 10 == 0 or step == len(steps) - 1):  # a host sync: not every step
            bar.set_postfix(loss=f"{tally.mean_loss():.4f}")
        for cb in callbacks:
            cb("batch_end", {"epoch": epoch, "step": step, "rank": d.rank})
    bar.close()
    loss_sum, seen, train_scores, train_labels = tally.totals()
    log.info("rank %d/%d: epoch %d trained on %d images", d.rank, d.world, epoch, seen)
    lr = parts.optimizer.param_groups[0]["lr"]
    parts.scheduler.step()
    # Reduce across ranks: every rank sees the same totals.
    sums = gather((loss_sum, seen, train_scores, train_labels), d)
    train_loss = sum(s[0] for s in sums) / max(sum(s[1] for s in sums), 1)
    train_auc = M.roc_auc(np.concatenate([s[3] for s in sums]), np.concatenate([s[2] for s in sums]))
    return {"lr": float(lr), "train_loss": float(train_loss), "train_auc": train_auc, "n_train": int(sum(s[1] for s in sums))}


def _validate(cfg: Config, epoch: int, trained: dict[str, Any], parts: _Parts, data: RunData, d: Dist) -> dict[str, Any]:
    """Score the validation rows (split over the ranks, gathered on all) and return the epoch's metrics row:
    ``trained`` (from :func:`_train_epoch`) plus validation loss, AUC, sensitivity and specificity at 0.5, and
    with EMA on ``val_auc_raw``, the AUC of the raw weights."""
    batch = cfg.train.batch_size * 2
    my_val = data.val_rows[d.rank :: d.world]
    scores = score_cached(parts.eval_model, data.cache.images, my_val, parts.spec, batch_size=batch, device=d.device)
    shards = gather((my_val, scores), d)
    val_rows_all = np.concatenate([p[0] for p in shards])
    val_scores = np.concatenate([p[1] for p in shards])
    y_val = data.labels[val_rows_all]
    with torch.no_grad():
        p = torch.from_numpy(val_scores).clamp(1e-7, 1 - 1e-7)
        val_logits = torch.log(p) - torch.log1p(-p)
        val_loss = float(nn.functional.binary_cross_entropy_with_logits(
            val_logits, torch.from_numpy(y_val).double(), pos_weight=parts.pos_weight.double().cpu()))
    row = {
        "epoch": epoch,
        "lr": trained["lr"],
        "train_loss": trained["train_loss"],
        "train_auc": trained["train_auc"],
        "val_loss": val_loss,
        "val_auc": M.roc_auc(y_val, val_scores),
        "val_sensitivity": M.sensitivity(y_val, val_scores, 0.5),
        "val_specificity": M.specificity(y_val, val_scores, 0.5),
        "n_train": trained["n_train"],
        "n_val": len(y_val),
    }
    if cfg.model.cause_head:  # the cause output on the validation films whose cause is known
        known = data.val_rows[data.causes[data.val_rows] >= 0]
        z = score_cached(parts.eval_model, data.cache.images, known, parts.spec, batch_size=batch, device=d.device,
                         logits=True, column=1)
        row[CAUSE_AUC_COLUMN] = M.roc_auc(data.causes[known], z)
    if parts.ema is not None:  # what weight averaging buys, epoch by epoch (one more pass over validation)
        raw = gather((my_val, score_cached(parts.model, data.cache.images, my_val, parts.spec, batch_size=batch,
                                           device=d.device)), d)
        order_raw = np.argsort(np.concatenate([p[0] for p in raw]))
        raw_scores = np.concatenate([p[1] for p in raw])[order_raw]
        row[RAW_AUC_COLUMN] = M.roc_auc(data.labels[np.sort(val_rows_all)], raw_scores)
    return row


def _end_of_epoch(cfg: Config, run_dir: Path, row: dict[str, Any], seconds: float, parts: _Parts, prog: _Progress,
                  d: Dist, validation: dict[str, Any]) -> None:
    """Record the epoch in ``prog`` (best epoch, early stopping) and, on rank 0, write best.safetensors when it
    improved (its metadata says how the validation images were chosen: ``validation``), then metrics.csv,
    timing.json and state.safetensors."""
    epoch = row["epoch"]
    prog.history.append(row)
    prog.times.append(seconds)
    improved = not math.isnan(row["val_auc"]) and row["val_auc"] > prog.best["auc"]
    if improved or prog.best["epoch"] == 0:
        prog.best = {"auc": row["val_auc"] if not math.isnan(row["val_auc"]) else -math.inf, "epoch": epoch}
        prog.bad_epochs = 0
        if d.main:
            save_checkpoint(run_dir / BEST, parts.eval_model.state_dict(),
                            checkpoint_meta(cfg, parts.spec, epoch, row, row["n_train"], row["n_val"], validation))
    else:
        prog.bad_epochs += 1
    prog.stopped = prog.bad_epochs >= cfg.train.patience
    if d.main:
        write_metrics_csv(run_dir / "metrics.csv", prog.history)
        write_timing(run_dir / "timing.json", prog.times)
        state = {
            "epoch": epoch, "model": parts.model.state_dict(), "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(), "history": prog.history, "times": prog.times,
            "best": prog.best, "bad_epochs": prog.bad_epochs, "stopped": prog.stopped, "rng": _rng_state(),
        }
        if parts.ema is not None:
            state["ema"] = parts.ema.state_dict()
        save_state(run_dir / STATE, state)
    log.info("epoch %d: train loss %.4f, val loss %.4f, val AUC %.4f (%.1f s)", epoch, row["train_loss"],
             row["val_loss"], row["val_auc"], seconds)


# --- the run ------------------------------------------------------------------------------------------


def train(
    cfg: Config, out_dir: str | os.PathLike[str], *, resume: bool = False, callbacks: Sequence[Callback] = (),
    progress: bool = True,
) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data`` and write the run folder ``out_dir`` (see the module docstring).
    With ``cfg.train.init_from`` the run fine-tunes that checkpoint (:mod:`.finetune`; build the config with
    :func:`~.finetune.finetune_config`).

    With ``resume=True`` the run continues from the last completed epoch stored in
    ``out_dir/state.safetensors``, restoring weights, optimiser, scheduler, EMA,
    random number generators and early-stopping state. ``callbacks`` are called as
    ``cb(event, info)`` with events ``"batch_end"`` and ``"epoch_end"``.
    """
    run_dir = Path(out_dir)
    cfg, d = _setup_run(cfg, run_dir, resume)
    parent = start_or_check_parent(cfg, run_dir, resume, d.main) if cfg.train.init_from else None
    data = prepare_data(cfg, run_dir, d, parent=parent)
    cfg = cause_config(cfg, run_dir, data, d)
    parts = _build(cfg, data, d, parent)
    if resume and (run_dir / STATE).exists():
        prog = _restore(run_dir, parts)
    else:
        prog = _Progress()
        if d.main and not parts.aug.is_identity:
            save_augmentation_grid(data.cache.images[data.train_rows[:6]], parts.aug, run_dir / "augmentations.png",
                                   seed=cfg.train.seed)
    net: nn.Module = DistributedDataParallel(parts.model) if d.world > 1 else parts.model
    net = compile_model(net, cfg.train.compile)
    for epoch in range(prog.start_epoch, cfg.train.epochs + 1):
        if prog.stopped:
            break
        t0 = time.perf_counter()
        trained = _train_epoch(cfg, epoch, net, parts, data, d, callbacks, progress)
        row = _validate(cfg, epoch, trained, parts, data, d)
        _end_of_epoch(cfg, run_dir, row, time.perf_counter() - t0, parts, prog, d, data.validation)
        for cb in callbacks:
            cb("epoch_end", {"epoch": epoch, "row": row, "rank": d.rank})
        d.barrier()
    if d.main:
        finalize_run(cfg, run_dir / BEST, data.cache, data.train_rows, data.val_rows, parts.spec, d.device,
                     parent=parent, site=data.site, validation=data.validation)
        plot_curves(run_dir, prog.history)
    d.barrier()
    return TrainResult(
        run_dir=run_dir, best_checkpoint=run_dir / BEST, best_epoch=int(prog.best["epoch"]),
        best_val_auc=float(prog.best["auc"]), epochs_run=len(prog.history), stopped_early=bool(prog.stopped),
        history=prog.history, fine_tuned_from=cfg.train.init_from,
    )


def load_run_config(run_dir: str | os.PathLike[str], overrides: Sequence[str] = ()) -> Config:
    """The config a run folder was started with (its ``config.json``), plus ``overrides``. Keys added to the
    config after the run started take the value that reproduces how it ran (``_BEFORE_KEY_EXISTED``)."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no config.json here; is this a pneumoscan run folder?")
    saved = json.loads(path.read_text(encoding="utf-8"))
    compat = [f"train.{k}={v}" for k, v in _BEFORE_KEY_EXISTED.items() if k not in (saved.get("train") or {})]
    return load_config(path, compat + list(overrides))


def resume(run_dir: str | os.PathLike[str], *, overrides: Sequence[str] = (), progress: bool = True,
           callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Continue the run in ``run_dir`` with the config saved there (``overrides`` may change e.g. data.root)."""
    return train(load_run_config(run_dir, overrides), run_dir, resume=True, progress=progress, callbacks=callbacks)


#: train.* keys added after release 0.1.0, with the behaviour runs had before them.
#: (A run that started NCHW and in float32 resumes so: the same numbers as if it had not stopped.)
_BEFORE_KEY_EXISTED = {"ema_warmup": "false", "channels_last": "false", "amp": "off"}
