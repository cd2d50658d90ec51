"""What the training data looked like to the model: the reference the scope gate and the drift check compare with.

Built at the end of training (or afterwards, for a model that predates it, with ``scripts/build_reference.py``)
from the model's own pooled features and simple intensity descriptors of:

* a seeded sample of the *training* split (the bank the nearest-neighbour distance is measured against), and
* the *validation* split, held out from training (on which the scope cut-off is chosen, and whose batches give
  the drift check its null distribution).

Building one is :mod:`pneumoscan.onboarding.reference_builder`'s business; this module is what the scope gate and
the drift check read at run time. It travels inside the checkpoint: the arrays as tensors named ``reference.*``, the rest as JSON under the
metadata key ``reference``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np

from pneumoscan.checkpoint import Checkpoint

if TYPE_CHECKING:  # writing a reference into a checkpoint makes tensors; reading one (the gate, drift) does not
    import torch

__all__ = ["DESCRIPTOR_NAMES", "MIN_REFERENCE_VAL", "TENSOR_PREFIX", "Reference", "intensity_descriptors",
           "knn_distance", "l2_normalize", "midpoint_cut", "reference_of"]

#: Prefix of the reference's tensors inside a checkpoint.
TENSOR_PREFIX = "reference."
#: Per-image intensity descriptors, in order (pixels of the model's input square, scaled to [0, 1]).
DESCRIPTOR_NAMES = ("p05", "p25", "p50", "p75", "p95", "mean", "std")
#: The fewest validation films a reference is built from (its cut-off and the drift null come from them).
MIN_REFERENCE_VAL = 20
_ARRAYS = ("bank", "val_features", "bank_descriptors", "val_descriptors")


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
        knn_cut: scores above it are unlike the training films (chosen so that at most ``max_val_flag_rate`` of
            the validation films are): a chest film there is scored with a caution (:mod:`pneumoscan.gate.scope`).
        refuse_cut: scores above it are not recognised as a chest radiograph at all: refused. None when the
            checkpoint names none; :attr:`refuse_limit` then falls back to the highest validation film's score.
        info: provenance (counts, date, how the cut-off was chosen), JSON-safe.
        bank_labels, val_labels: ``(B,)`` and ``(V,)`` 0/1 labels (1 = pneumonia) of the same films, or None for a
            reference built without them (older models, a site's unlabelled films): the drift check needs them to
            tell a change of case mix from a change of acquisition. Stored in the metadata as strings of "0"/"1".
        drift_null: the drift check's null distribution computed ahead of time (JSON, metadata key
            ``drift_null``; :mod:`pneumoscan.gate.drift_null`), or None: the check then computes it at run time.
    """

    bank: np.ndarray
    val_features: np.ndarray
    bank_descriptors: np.ndarray
    val_descriptors: np.ndarray
    knn_k: int
    knn_cut: float
    info: dict[str, Any] = field(default_factory=dict)
    bank_labels: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    refuse_cut: float | None = None
    drift_null: dict[str, Any] | None = None

    @cached_property
    def refuse_limit(self) -> float:
        """The score above which the scope gate refuses a film: :attr:`refuse_cut` when the checkpoint names one,
        else the highest score of the reference's own validation films (no held-out training film lies beyond
        it); never below :attr:`knn_cut`."""
        if self.refuse_cut is not None:
            return max(float(self.refuse_cut), float(self.knn_cut))
        own = self.ood_scores(self.val_features) if len(self.val_features) else np.zeros(1)
        return max(float(np.max(own)), float(self.knn_cut))

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
        labels = {f"{name}_labels": "".join("1" if v else "0" for v in np.asarray(values).reshape(-1))
                  for name, values in (("bank", self.bank_labels), ("val", self.val_labels)) if values is not None}
        refuse = {} if self.refuse_cut is None else {"refuse_cut": float(self.refuse_cut)}
        null = {} if self.drift_null is None else {"drift_null": self.drift_null}
        return {"knn_k": int(self.knn_k), "knn_cut": float(self.knn_cut), **refuse, **self.info, **labels, **null}

    def as_stored(self) -> "Reference":
        """A copy whose arrays are as a checkpoint keeps them (float16, read back as float32)."""
        return dataclasses.replace(self, info=dict(self.info), **{
            name: np.asarray(getattr(self, name), np.float16).astype(np.float32) for name in _ARRAYS})

    @classmethod
    def from_checkpoint_parts(cls, tensors: dict[str, Any], meta: dict[str, Any] | None) -> "Reference | None":
        """Rebuild from a checkpoint's ``reference.*`` tensors (torch tensors or NumPy arrays) and ``reference``
        metadata; None when absent."""
        if not meta or any(TENSOR_PREFIX + name not in tensors for name in _ARRAYS):
            return None
        arrays = {name: np.asarray(tensors[TENSOR_PREFIX + name], dtype=np.float32) for name in _ARRAYS}
        info = {k: v for k, v in meta.items()
                if k not in ("knn_k", "knn_cut", "refuse_cut", "bank_labels", "val_labels", "drift_null")}
        labels = {f"{name}_labels": _labels(meta.get(f"{name}_labels"), len(arrays[key]), f"{name}_labels")
                  for name, key in (("bank", "bank"), ("val", "val_features"))}
        refuse = meta.get("refuse_cut")
        null = meta.get("drift_null")
        return cls(**arrays, knn_k=int(meta["knn_k"]), knn_cut=float(meta["knn_cut"]), info=info, **labels,
                   refuse_cut=None if refuse is None else float(refuse),
                   drift_null=dict(null) if isinstance(null, dict) else None)


def _labels(text: Any, n: int, name: str) -> np.ndarray | None:
    """A stored label string ("0"/"1" per film) as ``(n,)`` int8; None when absent.

    Raises:
        ValueError: the string has other characters or the wrong length.
    """
    if text is None:
        return None
    if not isinstance(text, str) or len(text) != n or set(text) - {"0", "1"}:
        raise ValueError(f"the reference's {name} must be a string of {n} '0'/'1' characters (one per film), got "
                         f"{type(text).__name__} of length {len(text) if hasattr(text, '__len__') else '?'}")
    return (np.frombuffer(text.encode("ascii"), dtype=np.uint8) - ord("0")).astype(np.int8)


def midpoint_cut(val_scores: np.ndarray, max_val_flag_rate: float) -> float:
    """The out-of-scope cut-off: halfway between the validation score at the ``1 - max_val_flag_rate`` rank and
    the next one above it, so that at most that share of the validation films lies above it and none lies on it
    (a cut-off equal to a film's score would flip that film on a 1e-7 difference between backends)."""
    ordered = np.sort(np.asarray(val_scores, dtype=np.float64))
    i = min(len(ordered) - 1, int(np.floor((1.0 - max_val_flag_rate) * len(ordered))))
    return float(ordered[i] if i + 1 >= len(ordered) else (ordered[i] + ordered[i + 1]) / 2.0)


def reference_of(ckpt: Checkpoint) -> Reference | None:
    """The checkpoint's reference, or None for a model that carries none."""
    return Reference.from_checkpoint_parts(ckpt.extra, ckpt.meta.get("reference"))
