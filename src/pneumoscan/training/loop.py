"""Training loop: patient-level split, cached images, batched augmentation, early stopping on validation AUC,
resumable checkpoints and DistributedDataParallel under ``torchrun``.

Run folder layout (written by rank 0 only)::

    config.json          the full frozen config of the run
    metrics.csv          one row per epoch: train/val loss, val AUC, sensitivity and specificity at 0.5
                         (+ val_auc_raw, the raw weights' val AUC, when EMA weight averaging is on)
    timing.json          wall time per epoch (kept out of metrics.csv so that file is reproducible)
    state.safetensors    everything --resume needs, rewritten atomically after every epoch
    best.safetensors     the best checkpoint by validation AUC (+ best.json, a readable copy of its metadata); after
                         the last epoch it gains the operating threshold, temperature and validation summary
    val_scores.csv       calibrated validation scores of the best checkpoint (path,label,patient_id,cause,score)
    augmentations.png    originals and augmented draws, for a person to check
    loss.png, auc.png    curves, train against validation
    split.csv            the patient-level train/validation assignment
    failed_images.csv    path,reason of each image that could not be decoded and was left out (only if any)

Determinism: every epoch reseeds torch's generator from (seed, epoch, rank),
and the batch order comes from a sampler seeded with (seed, epoch). An
interrupted run resumed from its last completed epoch therefore replays
exactly what an uninterrupted run would have done.
"""

from __future__ import annotations

import csv
import dataclasses
import io
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
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DistributedSampler, WeightedRandomSampler
from tqdm.auto import tqdm

from pneumoscan import __version__
from pneumoscan import metrics as M
from pneumoscan.checkpoint import load_checkpoint, load_state, save_checkpoint, save_state
from pneumoscan.config import Config, ConfigError, load_config
from pneumoscan.constants import CLASS_NAMES, DEFAULT_CACHE_DIR
from pneumoscan.data import ImageCache, build_cache, index_dataset, split_index, write_manifest, write_scores_csv
from pneumoscan.errors import RunExistsError
from pneumoscan.models import create_model, default_preprocessing, has_pretrained
from pneumoscan.operating_point import choose_operating_point
from pneumoscan.preprocessing import cached_rows_to_unit, normalize
from pneumoscan.scoring import score_cached
from pneumoscan.training.augment import build_augmentation, save_augmentation_grid
from pneumoscan.utils import atomic_path, atomic_write_text, csv_safe_text, remove_stale_temps, seed_everything

log = logging.getLogger(__name__)

__all__ = ["TrainResult", "RunExistsError", "ema_update_fn", "load_run_config", "resume", "train"]

#: The run folder's list of images that could not be decoded (only when there are some).
FAILED_IMAGES = "failed_images.csv"
METRICS_COLUMNS = ["epoch", "lr", "train_loss", "train_auc", "val_loss", "val_auc", "val_sensitivity", "val_specificity"]
#: Extra column when weight averaging (EMA) is on: validation AUC of the raw, non-averaged weights.
RAW_AUC_COLUMN = "val_auc_raw"
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


# --- distributed helpers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def _setup_distributed(device_pref: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = torch.cuda.is_available() and device_pref in ("auto", "cuda")
    if device_pref == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device = 'cuda' but no CUDA device is available")
    if world <= 1:
        return _Dist(device=torch.device("cuda" if use_cuda else "cpu"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    rank = dist.get_rank()
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    return _Dist(rank=rank, world=dist.get_world_size(), device=device)


def _gather(obj: Any, d: _Dist) -> list[Any]:
    if d.world == 1:
        return [obj]
    out: list[Any] = [None] * d.world
    dist.all_gather_object(out, obj)
    return out


# --- data ---------------------------------------------------------------------------------------------


def _prepare_data(cfg: Config, run_dir: Path, d: _Dist) -> tuple[ImageCache, np.ndarray, np.ndarray]:
    """Index, split by patient and cache. Returns the cache and the train/val row indices into it."""
    if not cfg.data.root:
        raise ConfigError("no training data: pass --data PATH or set data.root / $PNEUMOSCAN_DATA")
    index = index_dataset(cfg.data.root, split=cfg.data.split or None, check=False, max_pixels=cfg.data.max_pixels)
    train_idx, val_idx = split_index(index, cfg.data.val_fraction, cfg.data.split_seed)
    if len(val_idx) == 0 or len(train_idx) == 0:
        raise ConfigError(f"{cfg.data.root}: too few patients to split into train and validation")
    cache_dir = Path(cfg.data.cache_dir or DEFAULT_CACHE_DIR)
    records = list(train_idx.records) + list(val_idx.records)
    if d.main:
        write_manifest(run_dir / "split.csv", records, ["train"] * len(train_idx) + ["val"] * len(val_idx))
        cache = build_cache(records, default_preprocessing(cfg.model.name, cfg.model.image_size), cache_dir,
                            max_pixels=cfg.data.max_pixels,
                            num_workers=cfg.data.num_workers, progress=True)
        d.barrier()
    else:
        d.barrier()  # rank 0 built the cache; this call finds it valid and only maps it
        cache = build_cache(records, default_preprocessing(cfg.model.name, cfg.model.image_size), cache_dir,
                            max_pixels=cfg.data.max_pixels,
                            num_workers=cfg.data.num_workers, progress=False, log_failures=False)
    val_paths = {r.path for r in val_idx.records}
    is_val = np.array([r.path in val_paths for r in cache.records], dtype=bool)
    tr, va = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    if cfg.train.max_train_images and len(tr) > cfg.train.max_train_images:
        rng = np.random.default_rng(cfg.train.seed)
        tr = np.sort(rng.choice(tr, cfg.train.max_train_images, replace=False))
    if d.main:
        _write_failed_images(run_dir / FAILED_IMAGES, cache.failures)
    if cache.failures and d.main:
        log.warning("%d image(s) could not be decoded and were left out (named above; all in %s)",
                    len(cache.failures), run_dir / FAILED_IMAGES)
    return cache, tr, va


def _write_failed_images(path: Path, failures: Sequence[tuple[str, str]]) -> None:
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


# --- the loop -----------------------------------------------------------------------------------------


def _epoch_order(n: int, labels: np.ndarray, cfg: Config, epoch: int, d: _Dist) -> np.ndarray:
    """Indices (into the train rows) that this rank visits in ``epoch``; every rank gets the same count."""
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


def ema_update_fn(decay: float, warmup: bool) -> Callable[[list[torch.Tensor], list[torch.Tensor], Any], None]:
    """``multi_avg_fn`` for :class:`AveragedModel`: ``avg <- avg + (1 - d) * (current - avg)``, in place.

    ``d = decay``, or with ``warmup`` ``min(decay, (1 + n) / (10 + n))`` where ``n`` counts the updates so far.
    With ``warmup=False`` it is torch's ``get_ema_multi_avg_fn(decay)``. Integer buffers follow the model.
    """
    if not 0.0 < decay < 1.0:
        raise ConfigError(f"train.ema_decay must be in (0, 1) when EMA is on, got {decay}")
    if not warmup:
        return get_ema_multi_avg_fn(decay)

    @torch.no_grad()
    def update(avg: list[torch.Tensor], current: list[torch.Tensor], num_averaged: Any) -> None:
        # AveragedModel calls this once per (device, dtype) group. Integer buffers (BatchNorm's
        # num_batches_tracked) are counters, not weights: lerp is undefined for them, and an average of a
        # counter means nothing, so they follow the current model.
        if not (avg[0].is_floating_point() or avg[0].is_complex()):
            torch._foreach_copy_(avg, current)
            return
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(avg, current, 1.0 - d)

    return update


def _write_metrics_csv(path: Path, history: list[dict[str, Any]]) -> None:
    # Every cell is a number (no text to neutralise for spreadsheets: a negative number must stay a number).
    buf = io.StringIO()
    columns = METRICS_COLUMNS + ([RAW_AUC_COLUMN] if any(RAW_AUC_COLUMN in row for row in history) else [])
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{row[k]:.6f}" if isinstance(row.get(k), float) else row.get(k, "")) for k in columns})
    atomic_write_text(path, buf.getvalue())


def _rng_state() -> dict[str, Any]:
    return {"torch": torch.random.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.random.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32), *[int(v) if i < 2 else float(v) for i, v in enumerate(np_state[2:])]))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def _checkpoint_meta(cfg: Config, spec: Any, epoch: int, row: dict[str, Any], n_train: int, n_val: int) -> dict[str, Any]:
    return {
        "model": cfg.model.name,
        "config": cfg.to_dict(),
        "preprocessing": spec.to_dict(),
        "classes": list(CLASS_NAMES),
        "epoch": epoch,
        "val_metrics": {k: row[k] for k in ("val_loss", "val_auc", "val_sensitivity", "val_specificity")},
        "n_train_images": n_train,
        "n_val_images": n_val,
        "pneumoscan_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _effective_config(cfg: Config) -> Config:
    """``cfg`` as it will run: ``model.pretrained`` means "start from pretrained weights where the model has
    them", so a model without any (seed-cnn, deep-cnn) trains from scratch, says so, and the run's config and
    checkpoints record ``pretrained = false``, which is what happened (and what ``--resume`` then reads)."""
    if cfg.model.pretrained and not has_pretrained(cfg.model.name):
        log.warning("%s has no pretrained weights: training from scratch", cfg.model.name)
        return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=False))
    return cfg


def train(
    cfg: Config, out_dir: str | os.PathLike[str], *, resume: bool = False, callbacks: Sequence[Callback] = (),
    progress: bool = True,
) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data`` and write the run folder ``out_dir`` (see the module docstring).

    With ``resume=True`` the run continues from the last completed epoch stored in
    ``out_dir/state.safetensors``, restoring weights, optimiser, scheduler, EMA,
    random number generators and early-stopping state. ``callbacks`` are called as
    ``cb(event, info)`` with events ``"batch_end"`` and ``"epoch_end"``.
    """
    run_dir = Path(out_dir)
    cfg = _effective_config(cfg)
    d = _setup_distributed(cfg.train.device)
    state_path = run_dir / "state.safetensors"
    if not resume and (state_path.exists() or (run_dir / "best.safetensors").exists()):
        raise RunExistsError(f"{run_dir}: already holds a training run; resume it with --resume or choose another --out")
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(run_dir)  # left by a killed run (SIGKILL leaves no chance to clean up)
        atomic_write_text(run_dir / "config.json", cfg.to_json() + "\n")
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)  # train() is an entry point: model initialisation depends on it

    cache, tr_rows, va_rows = _prepare_data(cfg, run_dir, d)
    labels_all = cache.labels.astype(np.int64)
    tr_labels, va_labels = labels_all[tr_rows], labels_all[va_rows]
    n_pos, n_neg = int(tr_labels.sum()), int((1 - tr_labels).sum())
    if n_pos == 0 or n_neg == 0:
        raise ConfigError("the training split needs images of both classes")
    log.info("train: %d images (%d pneumonia), val: %d images", len(tr_rows), n_pos, len(va_rows))

    spec = default_preprocessing(cfg.model.name, cfg.model.image_size)
    model = create_model(cfg.model.name, pretrained=cfg.model.pretrained, dropout=cfg.model.dropout).to(d.device)
    use_pos_weight = cfg.train.pos_weight and not cfg.train.balanced_sampler
    pos_weight = torch.tensor([n_neg / n_pos if use_pos_weight else 1.0], device=d.device)
    criterion = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    if cfg.train.scheduler == "cosine":
        scheduler: Any = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(cfg.train.epochs, 1))
    elif cfg.train.scheduler == "none":
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    else:
        raise ConfigError(f"train.scheduler must be 'cosine' or 'none', got {cfg.train.scheduler!r}")
    ema = (AveragedModel(model, multi_avg_fn=ema_update_fn(cfg.train.ema_decay, cfg.train.ema_warmup), use_buffers=True)
           if cfg.train.ema_decay > 0 else None)
    aug = build_augmentation(cfg.augment)

    history: list[dict[str, Any]] = []
    times: list[float] = []
    best = {"auc": -math.inf, "epoch": 0}
    bad_epochs, start_epoch, stopped = 0, 1, False
    if resume and state_path.exists():
        st = load_state(state_path)
        model.load_state_dict(st["model"])
        optimizer.load_state_dict(st["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        if ema is not None and "ema" in st:
            ema.load_state_dict(st["ema"])
        history, times, best, bad_epochs, stopped = st["history"], st["times"], st["best"], st["bad_epochs"], st["stopped"]
        _set_rng_state(st["rng"])
        start_epoch = int(st["epoch"]) + 1
        log.info("resuming %s after epoch %d", run_dir, st["epoch"])
    elif d.main and not aug.is_identity:
        save_augmentation_grid(cache.images[tr_rows[:6]], aug, run_dir / "augmentations.png", seed=cfg.train.seed)

    net: nn.Module = DistributedDataParallel(model) if d.world > 1 else model
    eval_model = ema.module if ema is not None else model

    for epoch in range(start_epoch, cfg.train.epochs + 1):
        if stopped:
            break
        t0 = time.perf_counter()
        torch.manual_seed(cfg.train.seed * 1_000_003 + epoch * 7919 + d.rank)  # augmentation + dropout draws
        order = tr_rows[_epoch_order(len(tr_rows), tr_labels, cfg, epoch, d)]
        net.train()
        loss_sum, seen = 0.0, 0
        train_scores: list[np.ndarray] = []
        train_labels: list[np.ndarray] = []
        steps = [order[i : i + cfg.train.batch_size] for i in range(0, len(order), cfg.train.batch_size)]
        steps = [s for s in steps if len(s) >= 2]  # batch norm cannot train on a batch of one
        bar = tqdm(steps, desc=f"epoch {epoch}/{cfg.train.epochs}", unit="batch", disable=not (progress and d.main), leave=False)
        for step, rows in enumerate(bar):
            rows = np.sort(rows)  # sequential reads from the memory map; order within a batch does not matter
            x = normalize(aug(cached_rows_to_unit(cache.images, rows)), spec).to(d.device)
            y = torch.from_numpy(labels_all[rows]).float().to(d.device)
            optimizer.zero_grad(set_to_none=True)
            logits = net(x).reshape(-1)
            loss = criterion(logits, y)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update_parameters(model)
            loss_sum += float(loss.detach()) * len(rows)
            # Train AUC from the augmented training-mode predictions: cheap, and enough to see over-fitting.
            train_scores.append(torch.sigmoid(logits.detach().float()).cpu().numpy())
            train_labels.append(labels_all[rows])
            seen += len(rows)
            bar.set_postfix(loss=f"{loss_sum / seen:.4f}")
            for cb in callbacks:
                cb("batch_end", {"epoch": epoch, "step": step, "rank": d.rank})
        bar.close()
        log.info("rank %d/%d: epoch %d trained on %d images", d.rank, d.world, epoch, seen)
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()

        # Reduce across ranks: every rank sees the same totals and the same validation scores.
        sums = _gather((loss_sum, seen, np.concatenate(train_scores or [np.empty(0)]),
                        np.concatenate(train_labels or [np.empty(0, dtype=np.int64)])), d)
        train_loss = sum(s[0] for s in sums) / max(sum(s[1] for s in sums), 1)
        train_auc = M.roc_auc(np.concatenate([s[3] for s in sums]), np.concatenate([s[2] for s in sums]))
        my_val = va_rows[d.rank :: d.world]
        scores = score_cached(eval_model, cache.images, my_val, spec, batch_size=cfg.train.batch_size * 2, device=d.device)
        parts = _gather((my_val, scores), d)
        val_rows_all = np.concatenate([p[0] for p in parts])
        val_scores = np.concatenate([p[1] for p in parts])
        y_val = labels_all[val_rows_all]
        with torch.no_grad():
            p = torch.from_numpy(val_scores).clamp(1e-7, 1 - 1e-7)
            val_logits = torch.log(p) - torch.log1p(-p)
            val_loss = float(nn.functional.binary_cross_entropy_with_logits(
                val_logits, torch.from_numpy(y_val).double(), pos_weight=pos_weight.double().cpu()))
        row = {
            "epoch": epoch,
            "lr": float(lr),
            "train_loss": float(train_loss),
            "train_auc": train_auc,
            "val_loss": val_loss,
            "val_auc": M.roc_auc(y_val, val_scores),
            "val_sensitivity": M.sensitivity(y_val, val_scores, 0.5),
            "val_specificity": M.specificity(y_val, val_scores, 0.5),
            "n_train": int(sum(s[1] for s in sums)),
            "n_val": int(len(y_val)),
        }
        if ema is not None:  # what weight averaging buys, epoch by epoch (one more pass over validation)
            raw = _gather((my_val, score_cached(model, cache.images, my_val, spec, batch_size=cfg.train.batch_size * 2,
                                                device=d.device)), d)
            order_raw = np.argsort(np.concatenate([p[0] for p in raw]))
            raw_scores = np.concatenate([p[1] for p in raw])[order_raw]
            row[RAW_AUC_COLUMN] = M.roc_auc(labels_all[np.sort(val_rows_all)], raw_scores)
        history.append(row)
        times.append(time.perf_counter() - t0)
        improved = not math.isnan(row["val_auc"]) and row["val_auc"] > best["auc"]
        if improved or best["epoch"] == 0:
            best = {"auc": row["val_auc"] if not math.isnan(row["val_auc"]) else -math.inf, "epoch": epoch}
            bad_epochs = 0
            if d.main:
                save_checkpoint(run_dir / "best.safetensors", eval_model.state_dict(),
                                _checkpoint_meta(cfg, spec, epoch, row, row["n_train"], row["n_val"]))
        else:
            bad_epochs += 1
        stopped = bad_epochs >= cfg.train.patience
        if d.main:
            _write_metrics_csv(run_dir / "metrics.csv", history)
            atomic_write_text(run_dir / "timing.json", json.dumps({"epoch_seconds": times, "total_seconds": sum(times)}, indent=2) + "\n")
            state = {
                "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "history": history, "times": times, "best": best,
                "bad_epochs": bad_epochs, "stopped": stopped, "rng": _rng_state(),
            }
            if ema is not None:
                state["ema"] = ema.state_dict()
            save_state(state_path, state)
        log.info("epoch %d: train loss %.4f, val loss %.4f, val AUC %.4f (%.1f s)", epoch, train_loss, val_loss,
                 row["val_auc"], times[-1])
        for cb in callbacks:
            cb("epoch_end", {"epoch": epoch, "row": row, "rank": d.rank})
        d.barrier()

    if d.main:
        _finalize(cfg, run_dir, cache, va_rows, spec, d.device)
        _plot_curves(run_dir, history)
    d.barrier()
    return TrainResult(
        run_dir=run_dir, best_checkpoint=run_dir / "best.safetensors", best_epoch=int(best["epoch"]),
        best_val_auc=float(best["auc"]), epochs_run=len(history), stopped_early=bool(stopped), history=history,
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
_BEFORE_KEY_EXISTED = {"ema_warmup": "false"}


def _finalize(cfg: Config, run_dir: Path, cache: ImageCache, va_rows: np.ndarray, spec: Any, device: torch.device) -> None:
    """With the best weights, fit the temperature and choose the operating threshold on VALIDATION, then re-save
    best.safetensors with ``operating_point``, ``calibration`` and ``val_summary``, and write val_scores.csv."""
    path = run_dir / "best.safetensors"
    ckpt = load_checkpoint(path)
    model = create_model(cfg.model.name, pretrained=False, dropout=cfg.model.dropout).to(device)
    model.load_state_dict(ckpt.state_dict)
    logits = score_cached(model, cache.images, va_rows, spec, batch_size=cfg.train.batch_size * 2, device=device, logits=True)
    records = [cache.records[i] for i in va_rows]
    extra, probs = choose_operating_point(records, logits, cfg.eval)
    save_checkpoint(path, ckpt.state_dict, {**ckpt.meta, **extra})
    write_scores_csv(run_dir / "val_scores.csv", records, probs)
    op = extra["operating_point"]
    log.info("operating threshold %.4f (validation sensitivity %.3f, specificity %.3f), temperature %.3f",
             op["threshold"], op["val_sensitivity"], op["val_specificity"], extra["calibration"]["temperature"])


def _plot_curves(run_dir: Path, history: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    epochs = [r["epoch"] for r in history]
    best = max(history, key=lambda r: -math.inf if math.isnan(r["val_auc"]) else r["val_auc"])
    specs = [
        ("loss.png", "Loss (weighted BCE)", [("train", "train_loss"), ("validation", "val_loss")]),
        ("auc.png", "ROC AUC", [("train (augmented, during the epoch)", "train_auc"), ("validation", "val_auc")]),
    ]
    for name, title, series in specs:
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, key in series:
            ax.plot(epochs, [r[key] for r in history], marker="o", label=label)
        ax.axvline(best["epoch"], color="grey", linestyle="--", linewidth=1, label=f"best epoch ({best['epoch']})")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with atomic_path(run_dir / name) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
