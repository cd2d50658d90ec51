"""Run a model: an ONNX Runtime session (the default) or a torch network turns model input into logits, and one
rule turns a probability into a decision.

This module imports no torch, so that prediction with ONNX Runtime never loads it:

* :func:`open_onnx_session` / :func:`read_onnx_metadata` / :func:`read_onnx_reference`: the one way to open an
  ONNX export and read what it carries.
* :class:`OnnxRunner`: model input ``(N, 1, S, S)`` float32 (a NumPy array) -> logits float64 ``(N,)``; safe to
  call from several threads.
* :class:`RuntimeOptions`: threads, batch size, decoding workers, the backend.
* :func:`decide`: ``probability >= threshold``, the decision rule (written once, in :mod:`pneumoscan.metrics.point`).

The torch side lives in :mod:`pneumoscan.inference.torch_scoring` (:class:`TorchRunner`, :func:`model_from_checkpoint`,
:func:`load_model`, :func:`score_cached`, :func:`features_cached`, :func:`score_dataset`, :class:`ScoredModel`,
:func:`resolve_device`); those names are importable from here too, and load torch on first use.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from pneumoscan.checkpoint import CheckpointError, parse_meta
from pneumoscan.constants import CLASS_NAMES
from pneumoscan.metrics.point import decide

#: (The torch names listed in ``_TORCH_NAMES`` are importable from here too, but not part of ``*``: they load torch.)
__all__ = [
    "BACKENDS", "CAUSE_NAME", "CHECKPOINT_SHA256_KEY", "DEFAULT_BACKEND", "FEATURES_NAME", "INPUT_NAME", "META_KEY", "OUTPUT_NAME",
    "REFERENCE_KEY", "OnnxRunner", "RuntimeOptions", "decide", "decision_label", "expit", "open_onnx_session",
    "read_onnx_metadata", "read_onnx_reference",
]

#: metadata_props key of an ONNX export holding its reference tensors (a base64 safetensors blob).
REFERENCE_KEY = "pneumoscan_reference"
#: metadata_props key of an ONNX export holding the SHA-256 of the ``.safetensors`` file it was exported from.
CHECKPOINT_SHA256_KEY = "pneumoscan_checkpoint_sha256"
INPUT_NAME = "image"
OUTPUT_NAME = "logit"
#: Second output of an ONNX export: the pooled features the scope gate and the drift check use.
FEATURES_NAME = "features"
#: Third output of an export of a model with a cause output: the logit that a pneumonia is viral, ``(N,)``.
CAUSE_NAME = "cause_logit"
#: metadata_props key of an ONNX export holding the checkpoint's metadata JSON.
META_KEY = "pneumoscan"
#: Inference backends: ONNX Runtime (the default: no torch, about 2.4x faster on the CPU) and eager torch.
BACKENDS = ("onnx", "torch")
DEFAULT_BACKEND = "onnx"

#: The torch side, loaded on first use (PEP 562): name -> module.
_TORCH_NAMES = {name: "pneumoscan.inference.torch_scoring" for name in (
    "ScoredModel", "TorchRunner", "features_cached", "load_model", "model_from_checkpoint", "resolve_device",
    "score_cached", "score_dataset")}


def __getattr__(name: str) -> Any:
    if name in _TORCH_NAMES:
        return getattr(importlib.import_module(_TORCH_NAMES[name]), name)
    raise AttributeError(f"module 'pneumoscan.inference.scoring' has no attribute {name!r}")


def decision_label(positive: bool) -> str:
    """``"PNEUMONIA"`` or ``"NORMAL"``."""
    return CLASS_NAMES[int(bool(positive))]


def expit(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid without overflow for large |z|


@dataclass(frozen=True)
class RuntimeOptions:
    """How inference runs. The defaults are the fastest measured (see ``benchmarks/inference.py``).

    Attributes:
        threads: intra-op threads of the model, for both backends. ONNX Runtime: this session's
            ``intra_op_num_threads`` (None: one per CPU core; 0: onnxruntime's default); torch:
            ``torch.set_num_threads(threads)`` when given (process-wide, so only when asked).
        inter_op_threads: onnxruntime inter-op threads (None: onnxruntime's default).
        channels_last: run the torch model in channels-last memory format.
        inference_mode: torch ``inference_mode`` instead of ``no_grad``.
        decode_workers: threads decoding images (Pillow and pydicom release the GIL); one pool per predictor,
            started on first use and kept for its life.
        batch_size: images per forward pass in :meth:`Predictor.predict_proba`.
        backend: ``"onnx"`` (ONNX Runtime) or ``"torch"``; see :data:`BACKENDS`.
        overlap: in :meth:`Predictor.score_files`, decode the next images while the model runs (a bounded
            producer/consumer pipeline); off: decode a batch, then score it.
        spin: let ONNX Runtime's intra-op threads spin while waiting for work (its own default). Off here: on a
            busy machine, and while decoding threads share the cores, spinning threads take the CPU the others need
            (measured 1.6x slower batches under load, ``benchmarks/inference.py``).
    """

    threads: int | None = None
    inter_op_threads: int | None = 1
    channels_last: bool = True
    inference_mode: bool = True
    decode_workers: int = 2
    batch_size: int = 64
    backend: str = DEFAULT_BACKEND
    overlap: bool = True
    spin: bool = False

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        if self.threads is not None and self.threads < 0:
            raise ValueError(f"threads must be at least 0 (0: the runtime's default), got {self.threads}")


def _logits(out: Any, n: int) -> np.ndarray:
    return np.asarray(out, dtype=np.float64).reshape(n, -1)[:, 0]


class OnnxRunner:
    """Logits from an onnxruntime session (``InferenceSession.run`` is thread-safe). Input: a float32 NumPy array
    (a torch tensor is accepted too, for callers that made one)."""

    backend = "onnxruntime"

    def __init__(self, session: Any) -> None:
        self.session = session
        names = {o.name for o in session.get_outputs()}
        self.has_features = FEATURES_NAME in names
        self.has_cause = CAUSE_NAME in names

    def __call__(self, x: Any) -> np.ndarray:
        x = _as_array(x)
        return _logits(self.session.run([OUTPUT_NAME], {INPUT_NAME: x})[0], len(x))

    def with_features(self, x: Any) -> tuple[np.ndarray, np.ndarray | None]:
        """``(logits, pooled features)``; features None for an export made before they were an output."""
        x = _as_array(x)
        if not self.has_features:
            return self(x), None
        logits, feats = self.session.run([OUTPUT_NAME, FEATURES_NAME], {INPUT_NAME: x})
        return _logits(logits, len(x)), np.asarray(feats, dtype=np.float32)

    def outputs(self, x: Any) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """``(logits (N,), cause logits (N,) or None, pooled features (N, C) or None)``: every output in one run."""
        x = _as_array(x)
        names = [OUTPUT_NAME] + ([FEATURES_NAME] if self.has_features else []) + ([CAUSE_NAME] if self.has_cause else [])
        got = dict(zip(names, self.session.run(names, {INPUT_NAME: x})))
        cause = got.get(CAUSE_NAME)
        feats = got.get(FEATURES_NAME)
        return (_logits(got[OUTPUT_NAME], len(x)),
                None if cause is None else np.asarray(cause, dtype=np.float64).reshape(len(x)),
                None if feats is None else np.asarray(feats, dtype=np.float32))


def _as_array(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return np.ascontiguousarray(x, dtype=np.float32)
    return np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)  # a torch tensor


def _load_proto(path: str | os.PathLike[str]) -> Any:
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError...
        raise CheckpointError(f"{path}: not a readable ONNX model ({exc})") from exc


def read_onnx_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the checkpoint metadata stored in an ONNX export.

    Raises:
        CheckpointError: the file is not readable ONNX, or carries no pneumoscan metadata.
    """
    props = {p.key: p.value for p in _load_proto(path).metadata_props}
    return _parse_meta(path, props)


def _parse_meta(path: str | os.PathLike[str], props: dict[str, str]) -> dict[str, Any]:
    if META_KEY not in props:
        raise CheckpointError(f"{path}: ONNX model has no pneumoscan metadata; export it with `pneumoscan export`")
    return parse_meta(props[META_KEY], path, kind="ONNX pneumoscan", check_format=True, required=("model", "preprocessing"))


def open_onnx_session(path: str | os.PathLike[str], *, threads: int | None = None, inter_op_threads: int | None = 1,
                      spin: bool = False) -> tuple[Any, dict[str, Any]]:
    """Open an export on the CPU with onnxruntime; return ``(InferenceSession, metadata)``.

    ``threads``: intra-op threads (None: one per CPU core; 0: onnxruntime's default); ``inter_op_threads``:
    None keeps onnxruntime's default; ``spin``: whether idle intra-op threads spin (see :class:`RuntimeOptions`).
    ``InferenceSession.run`` is thread-safe, so one session can serve many threads.
    With one intra-op thread a run computes on its calling thread only (what a server with one thread per
    request wants).

    Raises:
        CheckpointError: unreadable file, no pneumoscan metadata, or not the expected inputs and outputs.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads != 0:  # 0 keeps onnxruntime's own default
        opts.intra_op_num_threads = int(threads) if threads else (os.cpu_count() or 1)
    if inter_op_threads:
        opts.inter_op_num_threads = int(inter_op_threads)
    for key in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
        opts.add_session_config_entry(key, "1" if spin else "0")
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise CheckpointError(f"{path}: onnxruntime cannot load this model ({exc})") from exc
    props = dict(session.get_modelmeta().custom_metadata_map)
    meta = _parse_meta(path, props)
    inputs = [i.name for i in session.get_inputs()]
    outputs = [o.name for o in session.get_outputs()]
    if inputs != [INPUT_NAME] or OUTPUT_NAME not in outputs:
        raise CheckpointError(f"{path}: expected input '{INPUT_NAME}' and output '{OUTPUT_NAME}', "
                              f"got inputs {inputs} and outputs {outputs}")
    return session, meta


def read_onnx_reference(path: str | os.PathLike[str], props: dict[str, str] | None = None) -> dict[str, np.ndarray]:
    """The reference arrays an ONNX export carries (``{}`` for an export without them), as NumPy arrays.

    ``props``: the export's metadata map when the caller already has it (an open session's
    ``custom_metadata_map``), which saves reading the file again.

    Raises:
        CheckpointError: the file is not readable ONNX, or its reference blob is damaged.
    """
    import base64

    from safetensors.numpy import load as load_arrays

    if props is None:
        props = {p.key: p.value for p in _load_proto(path).metadata_props}
    blob = props.get(REFERENCE_KEY)
    if not blob:
        return {}
    try:
        return dict(load_arrays(base64.b64decode(blob)))
    except Exception as exc:  # noqa: BLE001 - binascii or safetensors errors: a damaged file
        raise CheckpointError(f"{path}: the ONNX model's reference is damaged ({exc})") from exc
