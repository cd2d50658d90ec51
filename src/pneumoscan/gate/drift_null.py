"""The drift check's null distribution, off the hot path: a table computed once with the reference, and a disk
cache for models without one.

:meth:`pneumoscan.gate.drift.DriftCheck.null` gives, for batches of ``n`` films at grid mix ``g``, the two MMD
scales and the threshold of the drift statistic, from bootstrap batches of the reference's validation films. Those
depend only on the reference and on the check's parameters, so they are computed when the reference is built (at
the end of training, by ``adapt``, by ``scripts/build_reference.py`` for an existing model) at the batch sizes
:data:`NULL_SIZES` (every grid mix), and stored in the checkpoint's reference metadata under ``drift_null``
(:class:`NullTable`). At run time a batch size between two of them is looked up by linear interpolation in ``1/n``:
each MMD scale is close to ``a + b/n`` (a fixed part, the distance between the validation films and the bank, and
a part that shrinks with the batch), and the threshold, a quantile of a ratio, moves little with ``n``. Measured on
the shipped model (``benchmarks/drift_cost.py``), the interpolated threshold is as far from the directly computed
one as two seeds of the direct computation are from each other.

The table also carries the kernel width (median heuristic) and the class-by-class kernel means of each MMD, so a
check built from it computes no kernel matrix of the reference at all; its statistic is the one the check computes
without a table (the same numbers, stored exactly).

Every table names the reference and the parameters it was computed for (:func:`null_identity`: SHA-256 of the
reference's arrays and labels, ``alpha``, ``n_resamples``, ``seed``, ``max_batch`` and :data:`MIX_STEP`), and one
that names another (the reference was rebuilt, labelled or adapted; the check runs with other parameters) is never
used. A model without a table computes each null it needs once and keeps it in :class:`NullCache`, a JSON file per
reference in the folder of cached ONNX exports (:func:`pneumoscan.inference.onnx_cache.cache_dir`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pneumoscan.gate.reference import Reference
from pneumoscan.utils import atomic_write_text

__all__ = ["MIX_STEP", "NULL_FORMAT", "NULL_SIZES", "NullCache", "NullTable", "null_identity", "table_sizes"]

log = logging.getLogger(__name__)

#: The grid of mixes (share of pneumonia) at which the null is computed: 0, 0.05, ..., 1.
MIX_STEP = 0.05
#: Format tag of a stored table and of a cache file.
NULL_FORMAT = "pneumoscan-drift-null/1"
#: The batch sizes a stored table holds (those above the check's ``max_batch`` are dropped, ``max_batch`` itself
#: added): dense where ``1/n`` moves fast, and every multiple of 50 (the sizes the server's rolling window tests).
NULL_SIZES = (50, 60, 70, 80, 90, 100, 125, 150, 175, 200, 250, 300, 350, 400, 450, 500)
_ARRAYS = ("bank", "val_features", "bank_descriptors", "val_descriptors")
_VALUES = ("scale_features", "scale_intensity", "threshold")

Null = tuple[float, float, float]


def table_sizes(max_batch: int, min_batch: int = NULL_SIZES[0]) -> list[int]:
    """The batch sizes a table for a check with this ``max_batch`` holds: :data:`NULL_SIZES` up to it, and it."""
    sizes = [n for n in NULL_SIZES if min_batch <= n <= max_batch]
    return sizes if sizes and sizes[-1] == max_batch else [*sizes, max_batch]


def null_identity(reference: Reference, *, alpha: float, n_resamples: int, seed: int, max_batch: int) -> str:
    """SHA-256 (hex) naming the null of ``reference`` under these parameters: of the reference's arrays (as float32,
    as they are read back from a checkpoint), its labels, the parameters and :data:`MIX_STEP`."""
    h = hashlib.sha256(NULL_FORMAT.encode())
    for name in _ARRAYS:
        a = np.ascontiguousarray(getattr(reference, name), dtype=np.float32)
        h.update(f"|{name}{a.shape}|".encode())
        h.update(a.data)
    for name in ("bank_labels", "val_labels"):
        labels = getattr(reference, name)
        h.update(f"|{name}|".encode())
        h.update(b"none" if labels is None else np.ascontiguousarray(labels, dtype=np.int8).data)
    params = {"alpha": float(alpha), "n_resamples": int(n_resamples), "seed": int(seed), "max_batch": int(max_batch),
              "mix_step": MIX_STEP}
    h.update(json.dumps(params, sort_keys=True).encode())
    return h.hexdigest()


def _positive(value: Any, what: str) -> float:
    v = float(value)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{what} must be a positive finite number, got {value!r}")
    return v


def constants_from(doc: dict[str, Any]) -> dict[str, tuple[float, np.ndarray]]:
    """``{"features": (gamma, G), "intensity": (gamma, G)}`` from a table or cache document.

    Raises:
        ValueError: missing or malformed.
    """
    out = {}
    for part in ("features", "intensity"):
        gamma = _positive(doc["gamma"][part], f"gamma.{part}")
        g = np.asarray(doc["class_kernel_means"][part], dtype=np.float64)
        if g.ndim != 2 or g.shape[0] != g.shape[1] or g.shape[0] not in (1, 2) or not np.isfinite(g).all():
            raise ValueError(f"class_kernel_means.{part} must be a 1x1 or 2x2 matrix of numbers, got shape {g.shape}")
        out[part] = (gamma, g)
    return out


def constants_doc(constants: dict[str, tuple[float, np.ndarray]]) -> dict[str, Any]:
    """The JSON form of :func:`constants_from`'s value (floats kept exactly)."""
    return {"gamma": {k: float(v[0]) for k, v in constants.items()},
            "class_kernel_means": {k: np.asarray(v[1], dtype=np.float64).tolist() for k, v in constants.items()}}


@dataclass(frozen=True)
class NullTable:
    """A stored null: ``values[k, s, g]`` for value ``k`` (feature scale, intensity scale, threshold), batch size
    ``sizes[s]`` and grid mix ``g`` (one column, ``g == 0``, for a reference without labels), computed with the
    mix refitted on each null batch (``refit``; a reference without labels: not). ``doc`` is the stored JSON."""

    identity: str
    sizes: np.ndarray
    values: np.ndarray
    refit: bool
    constants: dict[str, tuple[float, np.ndarray]]
    doc: dict[str, Any]

    @classmethod
    def from_doc(cls, doc: Any) -> "NullTable":
        """Parse and check a stored table.

        Raises:
            ValueError: not a table of this format, or its sizes or values are malformed.
        """
        if not isinstance(doc, dict) or doc.get("format") != NULL_FORMAT:
            raise ValueError(f"not a drift null table of format {NULL_FORMAT!r}")
        try:
            sizes = np.asarray(doc["sizes"], dtype=np.int64)
            values = np.asarray([doc[k] for k in _VALUES], dtype=np.float64)
            identity, refit, constants = str(doc["identity"]), bool(doc["refit"]), constants_from(doc)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed drift null table ({type(exc).__name__}: {exc})") from exc
        if sizes.ndim != 1 or sizes.size < 1 or np.any(np.diff(sizes) <= 0) or sizes[0] < 2:
            raise ValueError(f"the table's sizes must be increasing batch sizes, got {sizes.tolist()}")
        if values.ndim != 3 or values.shape[1] != sizes.size or values.shape[2] < 1:
            raise ValueError(f"the table's values must be {len(sizes)} sizes x grid mixes, got shape {values.shape[1:]}")
        if not (np.isfinite(values).all() and (values > 0).all()):
            raise ValueError("the table's scales and thresholds must be positive finite numbers")
        return cls(identity, sizes, values, refit, constants, doc)

    def covers(self, n: int, grid: int, refit: bool) -> bool:
        """True when the table answers for batches of ``n`` at grid mix ``grid`` (and this ``refit``)."""
        return refit == self.refit and 0 <= grid < self.values.shape[2] and self.sizes[0] <= n <= self.sizes[-1]

    def lookup(self, n: int, grid: int) -> Null:
        """``(feature scale, intensity scale, threshold)`` at batch size ``n``: the stored values at a stored size,
        else linear in ``1/n`` between the two stored sizes around it."""
        j = int(np.searchsorted(self.sizes, n))
        if self.sizes[j] == n:
            v = self.values[:, j, grid]
        else:
            n0, n1 = float(self.sizes[j - 1]), float(self.sizes[j])
            t = (1.0 / n0 - 1.0 / n) / (1.0 / n0 - 1.0 / n1)
            v = (1.0 - t) * self.values[:, j - 1, grid] + t * self.values[:, j, grid]
        return float(v[0]), float(v[1]), float(v[2])


def table_doc(identity: str, params: dict[str, Any], sizes: list[int], nulls: list[list[Null]], refit: bool,
              constants: dict[str, tuple[float, np.ndarray]], seconds: float) -> dict[str, Any]:
    """The JSON a checkpoint stores (``reference.drift_null``): ``nulls[s][g]`` for size ``sizes[s]``, grid mix
    ``g``."""
    arr = np.asarray(nulls, dtype=np.float64)  # (S, G, 3)
    return {"format": NULL_FORMAT, "identity": identity, **params, "mix_step": MIX_STEP, "refit": bool(refit),
            "sizes": [int(n) for n in sizes], "n_mixes": int(arr.shape[1]),
            **{k: arr[:, :, i].tolist() for i, k in enumerate(_VALUES)}, **constants_doc(constants),
            "lookup": "linear in 1/n between the stored batch sizes; the grid mix nearest the batch's",
            "seconds": round(float(seconds), 2)}


class NullCache:
    """The nulls a check computed, in ``<folder>/<identity>.drift-null.json`` (owner-only, written atomically):
    the kernel constants and one entry per (batch size, grid mix, refit). A file that cannot be read or names
    another identity is ignored (and replaced on the next write); a write that fails is logged, never raised."""

    def __init__(self, folder: str | os.PathLike[str], identity: str) -> None:
        self.path = Path(folder) / f"{identity}.drift-null.json"
        self.identity = identity
        self.constants: dict[str, tuple[float, np.ndarray]] | None = None
        self.entries: dict[tuple[int, int, bool], Null] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.is_file():
            return
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            if doc.get("format") != NULL_FORMAT or doc.get("identity") != self.identity:
                raise ValueError("another format or identity")
            entries = {}
            for key, v in doc.get("entries", {}).items():
                n, g, r = key.split("/")
                values = tuple(_positive(x, key) for x in v)
                if len(values) != 3 or r not in ("refit", "fixed"):
                    raise ValueError(f"malformed entry {key!r}")
                entries[(int(n), int(g), r == "refit")] = values
            self.constants = constants_from(doc) if "gamma" in doc else None
            self.entries = entries  # type: ignore[assignment]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.info("ignoring the drift null cache %s (%s)", self.path, exc)

    def save(self, constants: dict[str, tuple[float, np.ndarray]] | None) -> None:
        """Write the constants and every entry."""
        doc: dict[str, Any] = {"format": NULL_FORMAT, "identity": self.identity,
                               **(constants_doc(constants) if constants else {}),
                               "entries": {f"{n}/{g}/{'refit' if r else 'fixed'}": list(v)
                                           for (n, g, r), v in sorted(self.entries.items())}}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write_text(self.path, json.dumps(doc, sort_keys=True) + "\n")
        except OSError as exc:
            log.info("could not write the drift null cache %s (%s); it will be computed again next time", self.path,
                     exc.strerror or exc)
