"""Run a model: a torch network or an ONNX session turns model input into logits, and one rule turns a
probability into a decision.

* :func:`model_from_checkpoint` / :func:`load_model`: the one way to rebuild a network from a checkpoint.
* :func:`open_onnx_session` / :func:`read_onnx_metadata`: the one way to open an ONNX export.
* :class:`TorchRunner`, :class:`OnnxRunner`: model input ``(N, 1, S, S)`` float32 -> logits float64 ``(N,)``;
  both are safe to call from several threads.
* :func:`score_cached`: probabilities (or logits) for rows of the decoded-image cache, in batches (training's
  validation pass); :func:`score_dataset`: labelled images scored by one or more checkpoints (evaluation,
  re-choosing the operating point).
* :func:`decide`: ``probability >= threshold``, the decision rule (written once, in :mod:`pneumoscan.metrics.point`).
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

from pneumoscan.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    parse_meta,
)
from pneumoscan.constants import CLASS_NAMES
from pneumoscan.data import Record, build_cache
from pneumoscan.metrics import apply_temperature, decide
from pneumoscan.models import create_model
from pneumoscan.preprocessing import (
    Preprocessing,
    cached_rows_to_unit,
    check_model_input,
    normalize,
)

__all__ = [
    "FEATURES_NAME", "INPUT_NAME", "META_KEY", "REFERENCE_KEY", "read_onnx_reference", "OUTPUT_NAME", "OnnxRunner", "RuntimeOptions", "ScoredModel", "TorchRunner", "decide",
    "decision_label", "expit", "load_model", "model_from_checkpoint", "open_onnx_session", "read_onnx_metadata",
    "features_cached", "resolve_device", "score_cached", "score_dataset",
]

#: metadata_props key of an ONNX export holding its reference tensors (a base64 safetensors blob).
REFERENCE_KEY = "pneumoscan_reference"
INPUT_NAME = "image"
OUTPUT_NAME = "logit"
#: Second output of an ONNX export: the pooled features the scope gate and the drift check use.
FEATURES_NAME = "features"
#: metadata_props key of an ONNX export holding the checkpoint's metadata JSON.
META_KEY = "pneumoscan"


def decision_label(positive: bool) -> str:
    """``"PNEUMONIA"`` or ``"NORMAL"``."""
    return CLASS_NAMES[int(bool(positive))]


def resolve_device(pref: str) -> torch.device:
    """``"auto"``: CUDA when available, else the CPU; anything else is passed to ``torch.device``."""
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(pref)


@dataclass(frozen=True)
class RuntimeOptions:
    """How inference runs. The defaults are the fastest measured (see ``benchmarks/inference.py``).

    Attributes:
        threads: torch: when given, ``torch.set_num_threads(threads)`` (process-wide, so only when asked);
            onnxruntime: intra-op threads of this session (None: one per CPU core; 0: onnxruntime's default).
        inter_op_threads: onnxruntime inter-op threads (None: onnxruntime's default).
        channels_last: run the torch model in channels-last memory format.
        inference_mode: torch ``inference_mode`` instead of ``no_grad``.
        decode_workers: threads decoding the images of one batch (Pillow and pydicom release the GIL).
        batch_size: images per forward pass in :meth:`Predictor.predict_proba`.
    """

    threads: int | None = None
    inter_op_threads: int | None = 1
    channels_last: bool = True
    inference_mode: bool = True
    decode_workers: int = 2
    batch_size: int = 32


def model_from_checkpoint(ckpt: Checkpoint) -> nn.Module:
    """Build the checkpoint's network with its weights, in eval mode, on the CPU.

    Raises:
        CheckpointError: the weights do not fit the named model.
    """
    model = create_model(ckpt.model_name, pretrained=False)
    try:
        model.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{ckpt.path}: weights do not fit model {ckpt.model_name!r} ({exc})") from exc
    return model.eval()


def load_model(path: str | os.PathLike[str]) -> nn.Module:
    """Load a ``.safetensors`` checkpoint as an eval-mode torch module (input: :func:`preprocess` output)."""
    return model_from_checkpoint(load_checkpoint(path))


def expit(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid without overflow for large |z|


class TorchRunner:
    """Logits from the eager torch model; safe to call from several threads."""

    backend = "torch"

    def __init__(self, model: nn.Module, options: RuntimeOptions) -> None:
        if options.threads:
            torch.set_num_threads(options.threads)
        model.eval()
        for p in model.parameters():  # no .grad ever accumulates on shared weights (Grad-CAM differentiates
            p.requires_grad_(False)   # w.r.t. activations only)
        self.memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
        self.model = model.to(memory_format=self.memory_format)
        self.grad_context: Callable[[], Any] = torch.inference_mode if options.inference_mode else torch.no_grad

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        with self.grad_context():
            out = self.model(x.contiguous(memory_format=self.memory_format))
        return out.float().reshape(len(x), -1)[:, 0].numpy().astype(np.float64)

    def with_features(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """``(logits float64 (N,), pooled features float32 (N, C))``; features None for a model without
        ``forward_with_features``. The logits are those of :meth:`__call__`."""
        forward = getattr(self.model, "forward_with_features", None)
        if forward is None:
            return self(x), None
        with self.grad_context():
            out, feats = forward(x.contiguous(memory_format=self.memory_format))
        return out.float().reshape(len(x), -1)[:, 0].numpy().astype(np.float64), feats.float().numpy()


class OnnxRunner:
    """Logits from an onnxruntime session (``InferenceSession.run`` is thread-safe)."""

    backend = "onnxruntime"

    def __init__(self, session: Any) -> None:
        self.session = session

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        out = self.session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        return np.asarray(out, dtype=np.float64).reshape(len(x), -1)[:, 0]

    def with_features(self, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray | None]:
        """``(logits, pooled features)``; features None for an export made before they were an output."""
        if FEATURES_NAME not in {o.name for o in self.session.get_outputs()}:
            return self(x), None
        logits, feats = self.session.run([OUTPUT_NAME, FEATURES_NAME], {INPUT_NAME: x.numpy()})
        return np.asarray(logits, dtype=np.float64).reshape(len(x), -1)[:, 0], np.asarray(feats, dtype=np.float32)


@torch.no_grad()
def score_cached(
    model: nn.Module, images: np.ndarray, rows: np.ndarray, spec: Preprocessing, *, batch_size: int = 64,
    device: torch.device | str = "cpu", temperature: float = 1.0, logits: bool = False,
) -> np.ndarray:
    """Pneumonia probabilities for ``images[rows]`` (uint8 (N, S, S) already at the model's size: the cache).

    Returns float64 (len(rows),) in [0, 1]. ``temperature`` divides the logits (calibration).
    With ``logits=True`` it returns the logits divided by ``temperature`` instead (unbounded; what
    temperature fitting needs, since probabilities saturate in float32).
    """
    was_training = model.training
    model.eval()
    out = np.empty(len(rows), dtype=np.float64)
    for start in range(0, len(rows), batch_size):
        sel = rows[start : start + batch_size]
        x = normalize(cached_rows_to_unit(images, sel), spec)
        check_model_input(x, spec)
        x = x.to(device)
        z = model(x).float().reshape(-1) / temperature
        out[start : start + len(sel)] = (z if logits else torch.sigmoid(z)).cpu().numpy()
    model.train(was_training)
    return out


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the checkpoint metadata stored in an ONNX export.

    Raises:
        CheckpointError: the file is not readable ONNX, or carries no pneumoscan metadata.
    """
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError...
        raise CheckpointError(f"{path}: not a readable ONNX model ({exc})") from exc
    props = {p.key: p.value for p in proto.metadata_props}
    return _parse_meta(path, props)


def _parse_meta(path: str | os.PathLike[str], props: dict[str, str]) -> dict[str, Any]:
    if META_KEY not in props:
        raise CheckpointError(f"{path}: ONNX model has no pneumoscan metadata; export it with `pneumoscan export`")
    return parse_meta(props[META_KEY], path, kind="ONNX pneumoscan", check_format=True, required=("model", "preprocessing"))


def open_onnx_session(path: str | os.PathLike[str], *, threads: int | None = None,
                      inter_op_threads: int | None = 1) -> tuple[Any, dict[str, Any]]:
    """Open an export on the CPU with onnxruntime; return ``(InferenceSession, metadata)``.

    ``threads``: intra-op threads (None: one per CPU core; 0: onnxruntime's default); ``inter_op_threads``:
    None keeps onnxruntime's default. ``InferenceSession.run`` is thread-safe, so one session can serve many threads.

    Raises:
        CheckpointError: unreadable file, no pneumoscan metadata, or not the expected inputs and outputs.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads != 0:  # 0 keeps onnxruntime's own default
        opts.intra_op_num_threads = int(threads) if threads else (os.cpu_count() or 1)
    if inter_op_threads:
        opts.inter_op_num_threads = int(inter_op_threads)
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise CheckpointError(f"{path}: onnxruntime cannot load this model ({exc})") from exc
    meta = _parse_meta(path, dict(session.get_modelmeta().custom_metadata_map))
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if inputs != [INPUT_NAME] or OUTPUT_NAME not in outputs:
        raise CheckpointError(f"{path}: expected input '{INPUT_NAME}' and output '{OUTPUT_NAME}', "
                              f"got inputs {inputs} and outputs {outputs}")
    return session, meta


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


@torch.no_grad()
def features_cached(model: nn.Module, images: np.ndarray, rows: np.ndarray, spec: Preprocessing, *,
                    batch_size: int = 64, device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """``(logits (N,), pooled features (N, C))`` for rows of the decoded-image cache, in batches."""
    was_training = model.training
    model.eval()
    logits, feats = [], []
    for start in range(0, len(rows), batch_size):
        x = normalize(cached_rows_to_unit(images, rows[start:start + batch_size]), spec)
        check_model_input(x, spec)
        z, f = model.forward_with_features(x.to(device))
        logits.append(z.float().reshape(len(x), -1)[:, 0].cpu().numpy())
        feats.append(f.float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(logits).astype(np.float64), np.concatenate(feats)


def score_dataset(paths: Sequence[str | os.PathLike[str]], records: list[Record], cache_dir: Path, device: torch.device,
               batch_size: int, num_workers: int, progress: bool) -> tuple[list[Record], list[ScoredModel], list[tuple[str, str]]]:
    """Score labelled images with each checkpoint, through the decoded-image cache.

    Returns ``(records every model could read, one ScoredModel per checkpoint, (path, reason) failures)``.
    """
    ckpts = [load_checkpoint(p) for p in paths]
    caches = [build_cache(records, c.info.preprocessing, cache_dir,
                          num_workers=num_workers, progress=progress) for c in ckpts]
    decoded = set.intersection(*[{r.path for r in c.records} for c in caches])
    kept = [r for r in records if r.path in decoded]  # every model sees the same images
    failures = sorted({f for c in caches for f in c.failures})
    scored = []
    for ckpt, cache in zip(ckpts, caches):
        row_of = {r.path: i for i, r in enumerate(cache.records)}
        rows = np.array([row_of[r.path] for r in kept], dtype=np.int64)
        model = model_from_checkpoint(ckpt).to(device)
        spec = ckpt.info.preprocessing
        logits, feats = features_cached(model, cache.images, rows, spec, batch_size=batch_size, device=device)
        scored.append(ScoredModel(ckpt, logits, apply_temperature(logits, ckpt.temperature),
                                  apply_temperature(logits, 1.0), cache.images, rows, feats))
    return kept, scored, failures


def read_onnx_reference(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The reference tensors an ONNX export carries (``{}`` for an export without them).

    Raises:
        CheckpointError: the file is not readable ONNX, or its reference blob is damaged.
    """
    import base64

    import onnx
    from safetensors.torch import load as load_tensors

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError...
        raise CheckpointError(f"{path}: not a readable ONNX model ({exc})") from exc
    blob = {p.key: p.value for p in proto.metadata_props}.get(REFERENCE_KEY)
    if not blob:
        return {}
    try:
        return dict(load_tensors(base64.b64decode(blob)))
    except Exception as exc:  # noqa: BLE001 - binascii or safetensors errors: a damaged file
        raise CheckpointError(f"{path}: the ONNX model's reference is damaged ({exc})") from exc
