"""Checkpoints that carry everything needed to reproduce a prediction, and never unpickle code.

A checkpoint is ONE ``.safetensors`` file: the weights are its tensors and the
metadata (model name, full config, preprocessing, class names, epoch,
validation metrics, operating threshold, temperature) is JSON stored in the
file's header under the key ``pneumoscan``. One file means one atomic rename
and nothing to keep in step. A readable copy of the metadata is written beside
it as ``<name>.json``; the copy is for people, the loader reads the header.

The training state used by ``--resume`` (optimiser, scheduler, random number
generators, early stopping) is stored the same way: nested dicts and lists are
flattened so their tensors go into safetensors and everything else into JSON.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import safe_open

from pneumoscan.errors import CheckpointError
from pneumoscan.preprocessing import Preprocessing
from pneumoscan.utils import atomic_path, atomic_write_text

if TYPE_CHECKING:  # reading a checkpoint's metadata and reference needs no torch (load_checkpoint_arrays)
    import numpy as np
    import torch

__all__ = [
    "CHECKPOINT_FORMAT",
    "EXTRA_PREFIXES",
    "Checkpoint",
    "CheckpointError",
    "FALLBACK_THRESHOLD",
    "ModelMeta",
    "load_checkpoint",
    "load_checkpoint_arrays",
    "save_checkpoint",
    "load_state",
    "save_state",
]

CHECKPOINT_FORMAT = "pneumoscan-checkpoint/1"
_META_KEY = "pneumoscan"


#: Names of tensors in a checkpoint file that are not weights.
EXTRA_PREFIXES = ("reference.", "trainset.")

#: The operating threshold of a model that carries none chosen on validation (older checkpoints), and the
#: fallback when validation cannot choose one. Written here once; every reader says when it was used.
FALLBACK_THRESHOLD = 0.5


@dataclass(frozen=True)
class ModelMeta:
    """A model file's metadata, typed: what every reader needs, parsed and checked once.

    ``raw`` keeps the whole JSON (reports show more of it). ``threshold_source`` is ``"checkpoint"`` when the
    operating threshold was chosen on validation and stored, else ``"fallback_0.5"``.
    """

    model: str
    preprocessing: Preprocessing
    threshold: float
    threshold_source: str
    temperature: float
    operating_point: dict[str, Any]
    calibration: dict[str, Any]
    val_summary: dict[str, Any] | None
    val_metrics: dict[str, Any]
    classes: tuple[str, ...]
    epoch: int | None
    config: dict[str, Any]
    raw: dict[str, Any]
    #: The network's outputs, in the order of its head's columns: ``("pneumonia",)`` or ``("pneumonia", "viral")``
    #: (the second: the logit that a pneumonia is viral rather than bacterial; see
    #: :mod:`pneumoscan.onboarding.cause`).
    outputs: tuple[str, ...] = ("pneumonia",)
    #: The cause output's operating point (``threshold``, ``temperature``, how they were chosen, validation
    #: figures); None without a cause output, or while training (chosen at the end of the run).
    cause: dict[str, Any] | None = None

    @property
    def has_cause(self) -> bool:
        """True when the network has the cause output (whether or not its operating point is chosen yet)."""
        return "viral" in self.outputs

    @property
    def cause_threshold(self) -> float | None:
        """The cause output's operating threshold on P(viral), or None (no cause output, or none chosen)."""
        return None if not self.cause else float(self.cause["threshold"])

    @property
    def cause_temperature(self) -> float:
        return 1.0 if not self.cause else float(self.cause.get("temperature", 1.0))

    @classmethod
    def from_dict(cls, meta: dict[str, Any], source: str | os.PathLike[str] | None = None) -> "ModelMeta":
        """Parse a checkpoint's (or ONNX export's) metadata.

        Raises:
            CheckpointError: a required key is missing or a value is out of range (names ``source``).
        """
        where = source or "model metadata"
        try:
            op = dict(meta.get("operating_point") or {})
            calibration = dict(meta.get("calibration") or {})
            threshold = float(op.get("threshold", FALLBACK_THRESHOLD))
            temperature = float(calibration.get("temperature", 1.0))
            parsed = cls(
                model=str(meta["model"]), preprocessing=Preprocessing.from_dict(meta["preprocessing"]),
                threshold=threshold, threshold_source="checkpoint" if "threshold" in op else "fallback_0.5",
                temperature=temperature, operating_point=op, calibration=calibration,
                val_summary=meta.get("val_summary") or None, val_metrics=dict(meta.get("val_metrics") or {}),
                classes=tuple(meta.get("classes") or ()), epoch=meta.get("epoch"),
                config=dict(meta.get("config") or {}), raw=dict(meta),
                outputs=tuple(str(o) for o in (meta.get("outputs") or ("pneumonia",))),
                cause=dict(meta["cause"]) if meta.get("cause") else None,
            )
        except KeyError as exc:
            raise CheckpointError(f"{where}: model metadata lacks {exc}") from exc
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: invalid model metadata ({exc})") from exc
        if not 0.0 <= threshold <= 1.0 or not temperature > 0:
            raise CheckpointError(f"{where}: invalid operating threshold {threshold} or temperature {temperature} "
                                  "in the model's metadata")
        if parsed.outputs not in (("pneumonia",), ("pneumonia", "viral")):
            raise CheckpointError(f"{where}: unknown model outputs {list(parsed.outputs)}; this pneumoscan knows "
                                  "['pneumonia'] and ['pneumonia', 'viral']")
        if parsed.cause is not None:
            ct, cT = parsed.cause.get("threshold"), parsed.cause.get("temperature", 1.0)
            if not parsed.has_cause or not isinstance(ct, (int, float)) or not 0.0 <= ct <= 1.0 or not cT > 0:
                raise CheckpointError(f"{where}: invalid cause operating point in the model's metadata ({ct}, {cT})")
        return parsed


@dataclass
class Checkpoint:
    """Weights plus metadata. ``meta`` always has at least ``model``, ``config``, ``preprocessing`` and ``classes``.

    Tensors are torch tensors from :func:`load_checkpoint`, NumPy arrays from :func:`load_checkpoint_arrays`."""

    state_dict: dict[str, torch.Tensor | np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)
    path: str | None = None
    #: Tensors that are not weights (the scope/drift reference: names starting with ``reference.``).
    extra: dict[str, torch.Tensor | np.ndarray] = field(default_factory=dict)

    @property
    def info(self) -> ModelMeta:
        """The metadata, typed (:class:`ModelMeta`)."""
        return ModelMeta.from_dict(self.meta, self.path)

    @property
    def model_name(self) -> str:
        return str(self.meta["model"])

    @property
    def threshold(self) -> float:
        """The operating threshold chosen on validation (:data:`FALLBACK_THRESHOLD` when none was chosen)."""
        return self.info.threshold

    @property
    def temperature(self) -> float:
        return self.info.temperature


def save_checkpoint(path: str | os.PathLike[str], state_dict: dict[str, torch.Tensor], meta: dict[str, Any], *,
                    extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Write weights + metadata atomically to ``path`` (``.safetensors``) and a JSON copy beside it.

    ``extra`` tensors (names starting with one of :data:`EXTRA_PREFIXES`, e.g. the reference) travel in the same
    file and come back in :attr:`Checkpoint.extra`, apart from the weights.
    """
    for key in ("model", "config", "preprocessing", "classes"):
        if key not in meta:
            raise ValueError(f"checkpoint metadata needs '{key}'")
    for name in extra or {}:
        if not name.startswith(EXTRA_PREFIXES):
            raise ValueError(f"extra tensor {name!r} must be named with a prefix in {EXTRA_PREFIXES}")
    from safetensors.torch import save_file

    meta = {"format": CHECKPOINT_FORMAT, **meta}
    text = json.dumps(meta, sort_keys=True, allow_nan=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in {**state_dict, **(extra or {})}.items()}
    out = Path(path)
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata={_META_KEY: text})
    atomic_write_text(out.with_suffix(".json"), json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return out


def _read(path: str | os.PathLike[str], framework: str = "pt",
          keep: tuple[str, ...] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(tensors, metadata)``; ``framework`` ``"pt"`` (torch tensors) or ``"numpy"``; ``keep``: only tensors
    whose names start with one of these prefixes (None: all)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found")
    try:
        with safe_open(str(p), framework=framework, device="cpu") as fh:
            header = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys() if keep is None or k.startswith(keep)}
    except Exception as exc:  # safetensors raises its own error types for bad headers
        raise CheckpointError(f"{p}: not a readable safetensors checkpoint ({exc})") from exc
    if _META_KEY not in header:
        raise CheckpointError(f"{p}: safetensors file has no pneumoscan metadata; was it written by pneumoscan?")
    return tensors, parse_meta(header[_META_KEY], p)


def parse_meta(text: str, source: str | os.PathLike[str], *, kind: str = "checkpoint",
               check_format: bool = False, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Parse the JSON metadata stored in a model file (safetensors header or ONNX metadata_props).

    Raises :class:`CheckpointError` naming ``source`` when the text is not a JSON object, when
    ``check_format`` is set and its ``format`` is not :data:`CHECKPOINT_FORMAT`, or when a ``required``
    key is missing.
    """
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{source}: {kind} metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{source}: {kind} metadata is not a JSON object")
    if check_format and meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{source}: unsupported {kind} format {meta.get('format')!r}")
    for key in required:
        if key not in meta:
            raise CheckpointError(f"{source}: {kind} metadata lacks '{key}'")
    return meta


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`. Only tensors and JSON are parsed."""
    tensors, meta = _read(path)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: unsupported checkpoint format {meta.get('format')!r}")
    extra = {k: v for k, v in tensors.items() if k.startswith(EXTRA_PREFIXES)}
    weights = {k: v for k, v in tensors.items() if k not in extra}
    return Checkpoint(state_dict=weights, meta=meta, path=str(path), extra=extra)


def load_checkpoint_arrays(path: str | os.PathLike[str], *, weights: bool = False) -> Checkpoint:
    """:func:`load_checkpoint` without torch: the tensors come as NumPy arrays (safetensors' NumPy API); without
    ``weights`` only the metadata and :attr:`Checkpoint.extra` (the reference, the training films' hashes) are
    read, and ``state_dict`` is empty. What ONNX Runtime prediction needs from a ``.safetensors`` file."""
    tensors, meta = _read(path, "numpy", None if weights else EXTRA_PREFIXES)
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: unsupported checkpoint format {meta.get('format')!r}")
    extra = {k: v for k, v in tensors.items() if k.startswith(EXTRA_PREFIXES)}
    return Checkpoint(state_dict={k: v for k, v in tensors.items() if k not in extra}, meta=meta, path=str(path),
                      extra=extra)


# --- training state: nested structures with tensors -------------------------------------------------

_TENSOR_REF = "__tensor__"


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    import torch

    if isinstance(obj, torch.Tensor):
        key = prefix or "root"
        tensors[key] = obj.detach().to("cpu").contiguous().clone()
        return {_TENSOR_REF: key}
    if isinstance(obj, dict):
        # JSON keys must be strings; remember int keys (optimizer state is keyed by parameter index).
        return {
            "__dict__": [[k, _flatten(v, f"{prefix}.{k}" if prefix else str(k), tensors)] for k, v in obj.items()]
        }
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)], "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if hasattr(obj, "tolist"):  # numpy arrays and scalars
        return {"__numpy__": obj.tolist(), "dtype": str(getattr(obj, "dtype", ""))}
    raise TypeError(f"cannot store {type(obj).__name__} at '{prefix}' in a training state")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if _TENSOR_REF in obj:
            return tensors[obj[_TENSOR_REF]]
        if "__dict__" in obj:
            return {k: _unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            items = [_unflatten(v, tensors) for v in obj["__list__"]]
            return tuple(items) if obj.get("tuple") else items
        if "__numpy__" in obj:
            import numpy as np

            return np.asarray(obj["__numpy__"], dtype=obj["dtype"] or None)
    return obj


def save_state(path: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Atomically save a nested training state (tensors, numbers, strings, lists, dicts, numpy arrays)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    skeleton = _flatten(state, "", tensors)
    out = Path(path)
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(skeleton)})
    return out


def load_state(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a training state written by :func:`save_state`."""
    tensors, skeleton = _read(path)
    return _unflatten(skeleton, tensors)
