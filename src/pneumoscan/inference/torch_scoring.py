"""The torch side of :mod:`pneumoscan.inference.scoring`: rebuilding a network from a checkpoint, the eager torch runner, and
scoring rows of the decoded-image cache (training's validation pass, evaluation, calibration).

Imported only by training, export, evaluation and ``--backend torch``: prediction with ONNX Runtime
never loads this module (nor torch).

* :func:`model_from_checkpoint` / :func:`load_model`: the one way to rebuild a network from a checkpoint.
* :class:`TorchRunner`: model input ``(N, 1, S, S)`` float32 -> logits float64 ``(N,)``; safe to call from
  several threads.
* :func:`score_cached`: probabilities (or logits) for rows of the decoded-image cache, in batches;
  :func:`features_cached`: logits and pooled features the same way; :func:`score_dataset`: labelled images
  scored by one or more checkpoints, with torch or with their ONNX exports.
* :func:`resolve_device`: ``"auto"``, ``"cpu"`` or ``"cuda"`` to a torch device, written once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pneumoscan.checkpoint import Checkpoint, CheckpointError, load_checkpoint
from pneumoscan.data import Record, build_cache
from pneumoscan.metrics import apply_temperature
from pneumoscan.models import create_model
from pneumoscan.preprocessing import (
    Preprocessing,
    cached_rows_to_unit,
    check_model_input,
    normalize,
    preprocess_array,
)
from pneumoscan.inference.scoring import OnnxRunner, RuntimeOptions, open_onnx_session

__all__ = ["ScoredModel", "TorchRunner", "features_cached", "features_cached_onnx", "load_model", "outputs_cached",
           "model_from_checkpoint", "resolve_device", "score_cached", "score_dataset"]


def resolve_device(pref: str) -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; anything else is passed to ``torch.device``."""
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(pref)


def model_from_checkpoint(ckpt: Checkpoint) -> nn.Module:
    """Build the checkpoint's network with its weights, in eval mode, on the CPU.

    Raises:
        CheckpointError: the weights do not fit the named model.
    """
    model = create_model(ckpt.model_name, pretrained=False, num_classes=len(ckpt.info.outputs))
    try:
        model.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{ckpt.path}: weights do not fit model {ckpt.model_name!r} ({exc})") from exc
    return model.eval()


def load_model(path: str | os.PathLike[str]) -> nn.Module:
    """Load a ``.safetensors`` checkpoint as an eval-mode torch module (input: :func:`preprocess` output)."""
    return model_from_checkpoint(load_checkpoint(path))


def _as_tensor(x: Any) -> torch.Tensor:
    return torch.from_numpy(x) if isinstance(x, np.ndarray) else x


class TorchRunner:
    """Logits from the eager torch model; safe to call from several threads. Input: a float32 tensor or array."""

    backend = "torch"

    def __init__(self, model: nn.Module, options: RuntimeOptions) -> None:
        if options.threads:
            torch.set_num_threads(options.threads)
        model.eval()
        for p in model.parameters():  # scoring only: no .grad ever accumulates on shared weights
            p.requires_grad_(False)
        self.memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
        self.model = model.to(memory_format=self.memory_format)
        self.grad_context: Callable[[], Any] = torch.inference_mode if options.inference_mode else torch.no_grad

    def __call__(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        x = _as_tensor(x)
        with self.grad_context():
            out = self.model(x.contiguous(memory_format=self.memory_format))
        return out.float().reshape(len(x), -1)[:, 0].numpy().astype(np.float64)

    def with_features(self, x: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(logits float64 (N,), pooled features float32 (N, C))``; features None for a model without
        ``forward_with_features``. The logits are those of :meth:`__call__`."""
        x = _as_tensor(x)
        forward = getattr(self.model, "forward_with_features", None)
        if forward is None:
            return self(x), None
        with self.grad_context():
            out, feats = forward(x.contiguous(memory_format=self.memory_format))
        return out.float().reshape(len(x), -1)[:, 0].numpy().astype(np.float64), feats.float().numpy()

    def outputs(self, x: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """``(logits (N,), cause logits (N,) or None, pooled features (N, C) or None)`` in one forward pass."""
        x = _as_tensor(x)
        forward = getattr(self.model, "forward_with_features", None)
        with self.grad_context():
            if forward is None:
                out, feats = self.model(x.contiguous(memory_format=self.memory_format)), None
            else:
                out, feats = forward(x.contiguous(memory_format=self.memory_format))
        out = out.float().reshape(len(x), -1).numpy().astype(np.float64)
        return out[:, 0], (out[:, 1] if out.shape[1] > 1 else None), (None if feats is None else feats.float().numpy())


@torch.no_grad()
def score_cached(
    model: nn.Module, images: np.ndarray, rows: np.ndarray, spec: Preprocessing, *, batch_size: int = 64,
    device: torch.device | str = "cpu", temperature: float = 1.0, logits: bool = False, column: int = 0,
) -> np.ndarray:
    """Pneumonia probabilities for ``images[rows]`` (uint8 (N, S, S) already at the model's size: the cache).

    Returns float64 (len(rows),) in [0, 1]. ``temperature`` divides the logits (calibration).
    With ``logits=True`` it returns the logits divided by ``temperature`` instead (unbounded; what
    temperature fitting needs, since probabilities saturate in float32). ``column``: the network's output
    (0 pneumonia; 1 the cause output, P(viral), of a model that has one).
    """
    was_training = model.training
    model.eval()
    out = np.empty(len(rows), dtype=np.float64)
    for start in range(0, len(rows), batch_size):
        sel = rows[start : start + batch_size]
        x = normalize(cached_rows_to_unit(images, sel), spec)
        check_model_input(x, spec)
        x = x.to(device)
        z = model(x).float().reshape(len(sel), -1)[:, column] / temperature
        out[start : start + len(sel)] = (z if logits else torch.sigmoid(z)).cpu().numpy()
    model.train(was_training)
    return out


@dataclass
class ScoredModel:
    """One checkpoint's scores on the evaluated images; arrays are aligned with the evaluation's records."""

    checkpoint: Checkpoint
    logits: np.ndarray  # (N,) raw logits, before temperature scaling
    probs: np.ndarray  # (N,) sigmoid(logits / T): the calibrated probabilities every metric uses
    probs_raw: np.ndarray  # (N,) sigmoid(logits)
    images: np.ndarray  # the cache's (M, S, S) uint8 memory map
    rows: np.ndarray  # (N,) row of each record in ``images``
    features: np.ndarray | None = None  # (N, C) pooled features, for the scope gate
    cause_logits: np.ndarray | None = None  # (N,) raw cause logits (viral), for a model with a cause output

    @property
    def cause_probs(self) -> np.ndarray | None:
        """P(viral) at the checkpoint's cause temperature (None without a cause output or operating point)."""
        if self.cause_logits is None or self.checkpoint.info.cause is None:
            return None
        return apply_temperature(self.cause_logits, self.checkpoint.info.cause_temperature)


@torch.no_grad()
def outputs_cached(model: nn.Module, images: np.ndarray, rows: np.ndarray, spec: Preprocessing, *,
                   batch_size: int = 64, device: torch.device | str = "cpu"
                   ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """``(logits (N,), cause logits (N,) or None, pooled features (N, C))`` for rows of the decoded-image cache."""
    was_training = model.training
    model.eval()
    logits, causes, feats = [], [], []
    for start in range(0, len(rows), batch_size):
        x = normalize(cached_rows_to_unit(images, rows[start:start + batch_size]), spec)
        check_model_input(x, spec)
        z, f = model.forward_with_features(x.to(device))
        z = z.float().reshape(len(x), -1).cpu().numpy()
        logits.append(z[:, 0])
        causes.append(z[:, 1] if z.shape[1] > 1 else None)
        feats.append(f.float().cpu().numpy())
    model.train(was_training)
    if not logits:
        return np.empty(0, np.float64), None, np.empty((0, 0), np.float32)
    cause = None if causes[0] is None else np.concatenate(causes).astype(np.float64)
    return np.concatenate(logits).astype(np.float64), cause, np.concatenate(feats)


def features_cached(model: nn.Module, images: np.ndarray, rows: np.ndarray, spec: Preprocessing, *,
                    batch_size: int = 64, device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """``(logits (N,), pooled features (N, C))`` for rows of the decoded-image cache, in batches."""
    logits, _, feats = outputs_cached(model, images, rows, spec, batch_size=batch_size, device=device)
    return logits, feats


def features_cached_onnx(runner: OnnxRunner, images: np.ndarray, rows: np.ndarray, spec: Preprocessing, *,
                         batch_size: int = 64) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """:func:`outputs_cached` with an ONNX Runtime session (the same model input, made in NumPy): ``(logits, cause
    logits or None, features or None)`` (features None for an export without them)."""
    logits, causes, feats = [], [], []
    for start in range(0, len(rows), batch_size):
        x = preprocess_array(np.asarray(images[rows[start:start + batch_size]]), spec)
        z, c, f = runner.outputs(x)
        logits.append(z)
        causes.append(c)
        feats.append(f)
    if not logits:
        return np.empty(0, np.float64), None, None
    return (np.concatenate(logits), None if causes[0] is None else np.concatenate(causes),
            None if feats[0] is None else np.concatenate(feats))


def score_dataset(paths: Sequence[str | os.PathLike[str]], records: list[Record], cache_dir: Path, device: torch.device,
                  batch_size: int, num_workers: int, progress: bool, *,
                  onnx: Sequence[str | os.PathLike[str]] | None = None,
                  threads: int | None = None) -> tuple[list[Record], list[ScoredModel], list[tuple[str, str]]]:
    """Score labelled images with each checkpoint, through the decoded-image cache.

    ``onnx``: one ONNX export per checkpoint (the same weights, e.g. from :func:`pneumoscan.inference.onnx_cache.onnx_for`):
    the scores then come from ONNX Runtime (``threads`` intra-op threads), else from torch on ``device``.

    Returns ``(records every model could read, one ScoredModel per checkpoint, (path, reason) failures)``.
    """
    if onnx is not None and len(onnx) != len(paths):
        raise ValueError(f"score_dataset: {len(onnx)} ONNX files for {len(paths)} checkpoints")
    ckpts = [load_checkpoint(p) for p in paths]
    caches = [build_cache(records, c.info.preprocessing, cache_dir,
                          num_workers=num_workers, progress=progress) for c in ckpts]
    decoded = set.intersection(*[{r.path for r in c.records} for c in caches])
    kept = [r for r in records if r.path in decoded]  # every model sees the same images
    failures = sorted({f for c in caches for f in c.failures})
    scored = []
    for i, (ckpt, cache) in enumerate(zip(ckpts, caches)):
        row_of = {r.path: i for i, r in enumerate(cache.records)}
        rows = np.array([row_of[r.path] for r in kept], dtype=np.int64)
        spec = ckpt.info.preprocessing
        if onnx is not None:
            runner = OnnxRunner(open_onnx_session(onnx[i], threads=threads)[0])
            logits, cause, feats = features_cached_onnx(runner, cache.images, rows, spec, batch_size=batch_size)
        else:
            model = model_from_checkpoint(ckpt).to(device)
            logits, cause, feats = outputs_cached(model, cache.images, rows, spec, batch_size=batch_size,
                                                  device=device)
        scored.append(ScoredModel(ckpt, logits, apply_temperature(logits, ckpt.temperature),
                                  apply_temperature(logits, 1.0), cache.images, rows, feats, cause))
    return kept, scored, failures
