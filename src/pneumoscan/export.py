"""Export a checkpoint to ONNX, and open an export with onnxruntime.

The ONNX graph takes ``image``: float32 ``(N, 1, S, S)``, already made by
:func:`pneumoscan.models.preprocess` (``N`` is dynamic) and returns ``logit``: float32 ``(N, 1)``, the raw
pneumonia logit. The temperature and the operating threshold are not baked into the graph; like everything
else needed to reproduce a prediction, they travel in the checkpoint's metadata, which is stored as JSON in
the ONNX model's ``metadata_props`` under the key ``pneumoscan`` (the same JSON as in the checkpoint header),
so :class:`pneumoscan.predict.Predictor` treats both files alike.

Grad-CAM needs gradients, so heatmaps still need the ``.safetensors`` checkpoint.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from pneumoscan.checkpoint import CHECKPOINT_FORMAT, Checkpoint, CheckpointError, load_checkpoint, parse_meta
from pneumoscan.models import Preprocessing
from pneumoscan.utils import atomic_path

__all__ = ["DEFAULT_OPSET", "INPUT_NAME", "META_KEY", "OUTPUT_NAME", "export_onnx", "open_onnx_session",
           "read_onnx_metadata"]

DEFAULT_OPSET = 17
INPUT_NAME = "image"
OUTPUT_NAME = "logit"
#: metadata_props key holding the checkpoint's metadata JSON.
META_KEY = "pneumoscan"


def export_onnx(checkpoint: str | os.PathLike[str] | Checkpoint, out: str | os.PathLike[str], *,
                opset: int = DEFAULT_OPSET) -> Path:
    """Write the checkpoint's network as ONNX to ``out`` (atomically) and check it with ``onnx.checker``.

    Returns:
        the path written.

    Raises:
        CheckpointError: the checkpoint cannot be read or its weights do not fit its model.
    """
    import onnx

    from pneumoscan.predict import model_from_checkpoint

    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    model = model_from_checkpoint(ckpt)
    size = Preprocessing.from_dict(ckpt.meta["preprocessing"]).image_size
    # Batch 2 when tracing, so nothing gets specialised to a batch of one.
    example = torch.zeros(2, 1, size, size)
    target = Path(out)
    with atomic_path(target) as tmp:
        with warnings.catch_warnings():
            # The legacy (TorchScript) exporter is deprecated, and the TF-"SAME" padding of efficientnet-lite0
            # is computed from the spatial size; both are fine here: S is fixed by the checkpoint.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(  # dynamo=False: the torch.export-based exporter needs onnxscript (not installed)
                model, (example,), str(tmp), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=opset,
                do_constant_folding=True, dynamo=False)
        proto = onnx.load(str(tmp))
        meta = {"format": CHECKPOINT_FORMAT, **ckpt.meta}
        entry = proto.metadata_props.add()
        entry.key, entry.value = META_KEY, json.dumps(meta, sort_keys=True, allow_nan=True)
        proto.producer_name = "pneumoscan"
        proto.doc_string = (f"pneumoscan {ckpt.model_name}: input '{INPUT_NAME}' float32 (N, 1, {size}, {size}) "
                            f"normalised as in metadata 'pneumoscan'.preprocessing; output '{OUTPUT_NAME}' (N, 1) "
                            "pneumonia logit. Decision support, not a diagnosis.")
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
    return target


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
