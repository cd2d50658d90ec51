"""Export a checkpoint to ONNX (opening an export is :func:`pneumoscan.inference.scoring.open_onnx_session`).

The ONNX graph takes ``image``: float32 ``(N, 1, S, S)``, already made by
:func:`pneumoscan.preprocessing.preprocess` (``N`` is dynamic) and returns ``logit``: float32 ``(N, 1)``, the raw
pneumonia logit, ``features``: float32 ``(N, C)``, the pooled features the scope gate and the drift check
compare with the reference (which travels base64-encoded under ``pneumoscan_reference``), and, for a model with a
cause output, ``cause_logit``: float32 ``(N,)``, the logit that a pneumonia is viral rather than bacterial. The
temperatures and the operating thresholds are not baked into the graph; like everything
else needed to reproduce a prediction, they travel in the checkpoint's metadata, which is stored as JSON in
the ONNX model's ``metadata_props`` under the key ``pneumoscan`` (the same JSON as in the checkpoint header),
so :class:`pneumoscan.inference.predictor.Predictor` treats both files alike. An export made from a checkpoint file also
records that file's SHA-256 under ``pneumoscan_checkpoint_sha256``: ONNX Runtime prediction from a
``.safetensors`` checkpoint uses an export only when it names that checkpoint (:mod:`pneumoscan.inference.onnx_cache`).

Heatmaps (occlusion sensitivity) need only scores, so an export alone gives them too.
"""

from __future__ import annotations

import base64
import json
import os
import warnings
from pathlib import Path

import torch
from safetensors.torch import save as save_tensors
from torch import nn

from pneumoscan.checkpoint import CHECKPOINT_FORMAT, Checkpoint, load_checkpoint
from pneumoscan.preprocessing import Preprocessing
from pneumoscan.inference.scoring import (
    CAUSE_NAME,
    CHECKPOINT_SHA256_KEY,
    FEATURES_NAME,
    INPUT_NAME,
    META_KEY,
    OUTPUT_NAME,
    REFERENCE_KEY,
    open_onnx_session,
    read_onnx_metadata,
)
from pneumoscan.inference.torch_scoring import model_from_checkpoint
from pneumoscan.utils import atomic_path, file_sha256

__all__ = ["DEFAULT_OPSET", "INPUT_NAME", "META_KEY", "OUTPUT_NAME", "export_onnx", "open_onnx_session",
           "read_onnx_metadata"]

DEFAULT_OPSET = 17


class _LogitsAndFeatures(nn.Module):
    """What the export computes: the logits and the pooled features (the scope gate and drift check need them)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        logits, features = self.model.forward_with_features(x)
        if logits.shape[1] == 1:
            return logits, features
        return logits[:, :1], features, logits[:, 1]  # the cause output, a named output of its own


def export_onnx(checkpoint: str | os.PathLike[str] | Checkpoint, out: str | os.PathLike[str], *,
                opset: int = DEFAULT_OPSET) -> Path:
    """Write the checkpoint's network as ONNX to ``out`` (atomically, owner-only) and check it with
    ``onnx.checker``. When the checkpoint comes from a file, its SHA-256 goes into the metadata
    (``pneumoscan_checkpoint_sha256``).

    Returns:
        the path written.

    Raises:
        CheckpointError: the checkpoint cannot be read or its weights do not fit its model.
    """
    import onnx

    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    sha256 = file_sha256(ckpt.path) if ckpt.path and Path(ckpt.path).is_file() else None
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
            outputs = [OUTPUT_NAME, FEATURES_NAME] + ([CAUSE_NAME] if ckpt.info.has_cause else [])
            torch.onnx.export(  # dynamo=False: the torch.export-based exporter needs onnxscript (not installed)
                _LogitsAndFeatures(model), (example,), str(tmp), input_names=[INPUT_NAME],
                output_names=outputs, opset_version=opset,
                dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *outputs)},
                do_constant_folding=True, dynamo=False)
        proto = onnx.load(str(tmp))
        _add_metadata(proto, ckpt, sha256)
        proto.producer_name = "pneumoscan"
        proto.doc_string = (f"pneumoscan {ckpt.model_name}: input '{INPUT_NAME}' float32 (N, 1, {size}, {size}) "
                            f"normalised as in metadata 'pneumoscan'.preprocessing; output '{OUTPUT_NAME}' (N, 1) "
                            "pneumonia logit" + (f", '{CAUSE_NAME}' (N,) logit that a pneumonia is viral rather "
                                                 "than bacterial" if ckpt.info.has_cause else "")
                            + ". Decision support, not a diagnosis.")
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, str(tmp))
    return target


def _add_metadata(proto: object, ckpt: Checkpoint, sha256: str | None) -> None:
    """The checkpoint's metadata JSON, its reference (base64 safetensors) and its file's SHA-256."""
    meta = {"format": CHECKPOINT_FORMAT, **ckpt.meta}
    props = proto.metadata_props  # type: ignore[attr-defined]
    entry = props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta, sort_keys=True, allow_nan=True)
    if ckpt.extra:  # the scope/drift reference travels with the export
        ref = props.add()
        ref.key, ref.value = REFERENCE_KEY, base64.b64encode(save_tensors(ckpt.extra)).decode("ascii")
    if sha256:
        digest = props.add()
        digest.key, digest.value = CHECKPOINT_SHA256_KEY, sha256
