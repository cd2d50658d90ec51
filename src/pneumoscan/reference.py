"""What the training data looked like to the model: the reference the scope gate and the drift check compare with.

Built at the end of training (or afterwards, for a model that predates it, with ``scripts/build_reference.py``)
from the model's own pooled features and simple intensity descriptors of:

* a seeded sample of the *training* split (the bank the nearest-neighbour distance is measured against), and
* the *validation* split, held out from training (on which the scope cut-off is chosen, and whose batches give
  the drift check its null distribution).

It travels inside the checkpoint: the arrays as tensors named ``reference.*``, the rest as JSON under the
metadata key ``reference``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumoscan.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from pneumoscan.constants import DEFAULT_CACHE_DIR
from pneumoscan.data import build_cache, model_split
from pneumoscan.preprocessing import Preprocessing

if TYPE_CHECKING:  # building a reference needs torch; reading one (prediction, the scope gate, drift) does not
    import torch
    from torch import nn

__all__ = ["DESCRIPTOR_NAMES", "MIN_REFERENCE_VAL", "TENSOR_PREFIX", "Reference", "attach_reference", "build_reference",
           "features_cached", "midpoint_cut",
           "intensity_descriptors", "knn_distance", "l2_normalize", "reference_of"]

#: Prefix of the reference's tensors inside a checkpoint.
TENSOR_PREFIX = "reference."
#: Per-image intensity descriptors, in order (pixels of the model's input square, scaled to [0, 1]).
DESCRIPTOR_NAMES = ("p05", "p25", "p50", "p75", "p95", "mean", "std")
#: The fewest validation films a reference is built from (its cut-off and the drift null come from them).
MIN_REFERENCE_VAL = 20
_ARRAYS = ("bank", "val_features", "bank_descriptors", "val_descriptors")


def __getattr__(name: str) -> Any:
    if name == "features_cached":  # re-exported for older callers; it loads torch, so only on first use
        from pneumoscan.torch_scoring import features_cached

        return features_cached
    raise AttributeError(f"module 'pneumoscan.reference' has no attribute {name!r}")


def l2_normalize(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); an all-zero row stays zero."""
    f = np.asarray(features, dtype=np.float32)
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    return f / np.where(norms > 0, norms, 1.0)


def intensity_descriptors(squares: np.ndarray) -> np.ndarray:
    """``(N, 7)`` float32 descriptors of ``(N, S, S) uint8`` model-input squares: 5th..95th percentiles, mean, std."""
    x = np.asarray(squares, dtype=np.float32).reshape(len(squares), -1) / 255.0
    q = np.quantile(x, [0.05, 0.25, 0.5, 0.75, 0.95], axis=1).T
    return np.concatenate([q, x.mean(1, keepdims=True), x.std(1, keepdims=True)], axis=1).astype(np.float32)


def knn_distance(features: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """Cosine distance of each row of ``features`` to its ``k``-th nearest neighbour in ``bank`` (unit rows)."""
    sims = l2_normalize(features) @ bank.T
    k = min(k, bank.shape[0])
    return (1.0 - np.partition(sims, -k, axis=1)[:, -k]).astype(np.float64)


@dataclass
class Reference:
    """The reference arrays and the scope cut-off; see the module docstring.

    Attributes:
        bank: ``(B, C)`` unit-length pooled features of training-split films.
        val_features: ``(V, C)`` unit-length pooled features of the held-out validation films.
        bank_descriptors, val_descriptors: their :func:`intensity_descriptors`.
        knn_k: the neighbour whose distance is the out-of-distribution score.
        knn_cut: scores above it are out of scope (chosen so that at most ``max_val_flag_rate`` of the
            validation films are).
        info: provenance (counts, date, how the cut-off was chosen), JSON-safe.
    """

    bank: np.ndarray
    val_features: np.ndarray
    bank_descriptors: np.ndarray
    val_descriptors: np.ndarray
    knn_k: int
    knn_cut: float
    info: dict[str, Any] = field(default_factory=dict)

    def ood_scores(self, features: np.ndarray) -> np.ndarray:
        """Out-of-distribution score per image (cosine distance to the ``knn_k``-th nearest training film)."""
        return knn_distance(features, self.bank, self.knn_k)

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The arrays as float16 tensors named ``reference.*`` (for the checkpoint file)."""
        import torch

        return {TENSOR_PREFIX + name: torch.from_numpy(np.ascontiguousarray(getattr(self, name), np.float16))
                for name in _ARRAYS}

    def to_meta(self) -> dict[str, Any]:
        """The JSON part: cut-off, k, provenance."""
        return {"knn_k": int(self.knn_k), "knn_cut": float(self.knn_cut), **self.info}

    @classmethod
    def from_checkpoint_parts(cls, tensors: dict[str, Any], meta: dict[str, Any] | None) -> "Reference | None":
        """Rebuild from a checkpoint's ``reference.*`` tensors (torch tensors or NumPy arrays) and ``reference``
        metadata; None when absent."""
        if not meta or any(TENSOR_PREFIX + name not in tensors for name in _ARRAYS):
            return None
        arrays = {name: np.asarray(tensors[TENSOR_PREFIX + name], dtype=np.float32) for name in _ARRAYS}
        info = {k: v for k, v in meta.items() if k not in ("knn_k", "knn_cut")}
        return cls(**arrays, knn_k=int(meta["knn_k"]), knn_cut=float(meta["knn_cut"]), info=info)


def midpoint_cut(val_scores: np.ndarray, max_val_flag_rate: float) -> float:
    """The out-of-scope cut-off: halfway between the validation score at the ``1 - max_val_flag_rate`` rank and
    the next one above it, so that at most that share of the validation films lies above it and none lies on it
    (a cut-off equal to a film's score would flip that film on a 1e-7 difference between backends)."""
    ordered = np.sort(np.asarray(val_scores, dtype=np.float64))
    i = min(len(ordered) - 1, int(np.floor((1.0 - max_val_flag_rate) * len(ordered))))
    return float(ordered[i] if i + 1 >= len(ordered) else (ordered[i] + ordered[i + 1]) / 2.0)


def build_reference(model: nn.Module, images: np.ndarray, train_rows: np.ndarray, val_rows: np.ndarray,
                    spec: Preprocessing, *, bank_size: int = 2048, knn_k: int = 5, max_val_flag_rate: float = 0.01,
                    seed: int = 0, batch_size: int = 64, device: torch.device | str = "cpu",
                    source: str = "") -> Reference:
    """Build the reference from the decoded-image cache (``images``) and the split's row indices.

    ``bank_size`` training films (a seeded sample) form the bank; the cut-off (:func:`midpoint_cut`) leaves at
    most ``max_val_flag_rate`` of the validation films above it.
    """
    from pneumoscan.torch_scoring import features_cached

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
    return Reference(bank=bank, val_features=l2_normalize(val_f), knn_k=knn_k, knn_cut=cut, info=info,
                     bank_descriptors=intensity_descriptors(np.asarray(images[bank_rows])),
                     val_descriptors=intensity_descriptors(np.asarray(images[np.asarray(val_rows)])))


def reference_of(ckpt: Checkpoint) -> Reference | None:
    """The checkpoint's reference, or None for a model that carries none."""
    return Reference.from_checkpoint_parts(ckpt.extra, ckpt.meta.get("reference"))


def attach_reference(checkpoint: str | os.PathLike[str], data: str | os.PathLike[str], out: str | os.PathLike[str], *,
                     split: str | None = None, cache_dir: str | os.PathLike[str] = DEFAULT_CACHE_DIR,
                     bank_size: int = 2048, seed: int = 0, device: str = "auto") -> Reference:
    """Add a reference to a model trained before references existed, without retraining it.

    The model's own patient-level split is rebuilt from its stored config (``data.split``, ``data.val_fraction``,
    ``data.split_seed``) over ``data`` (the folder it was trained on), so the bank comes from its training films
    and the cut-off from its validation films. Writes ``out`` with the same weights and metadata plus the reference
    and the content hashes of its training and validation films (:mod:`pneumoscan.trainset`).

    Raises:
        DatasetError: the data cannot be indexed or split.
        ValueError: ``out`` is the source file (write a new file and swap it in deliberately).
    """
    from pneumoscan.torch_scoring import model_from_checkpoint, resolve_device
    from pneumoscan.trainset import split_hashes

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
                                 f"{data_cfg.get('split_seed', 42)})")
    hashes = split_hashes(ckpt, data, split=split)  # the films it trained on, by content (pneumoscan.trainset)
    save_checkpoint(dst, ckpt.state_dict, {**ckpt.meta, "reference": ref.to_meta()},
                    extra={**ckpt.extra, **ref.to_tensors(), **hashes})
    return ref
