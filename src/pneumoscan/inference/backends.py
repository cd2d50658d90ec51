"""Opening a model file with a backend: ONNX Runtime (the default, without torch) or eager torch.

:func:`open_model_file` is what :meth:`pneumoscan.inference.predictor.Predictor.from_checkpoint` does with a path:

* an ``.onnx`` export runs with ONNX Runtime (``backend="torch"`` is refused: it has no torch weights);
* a ``.safetensors`` checkpoint runs with ONNX Runtime on its export (:func:`pneumoscan.inference.onnx_cache.open_for_checkpoint`:
  the packaged ``model.onnx``, or one built once and cached);
* with ``backend="torch"``, a checkpoint runs with torch (``torch.set_num_threads(options.threads)`` when given).

The model's ``version`` is the first 12 hex digits of the SHA-256 of the file given, whichever backend runs it.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from pneumoscan.checkpoint import CheckpointError
from pneumoscan.errors import ModelNotFoundError, require_torch
from pneumoscan.gate.reference import Reference
from pneumoscan.inference.scoring import (
    OnnxRunner,
    RuntimeOptions,
    open_onnx_session,
    read_onnx_reference,
)
from pneumoscan.utils import file_sha256

__all__ = ["MODEL_ENV_VAR", "PACKAGED_MODEL", "default_model_path", "open_model_file"]

#: Environment variable naming the model used when none is given.
MODEL_ENV_VAR = "PNEUMOSCAN_MODEL"
#: Where the packaged default model lives.
PACKAGED_MODEL = Path(__file__).resolve().parents[1] / "assets" / "model.safetensors"


def default_model_path() -> Path:
    """Return the model to use when none is given: ``$PNEUMOSCAN_MODEL``, else the packaged model.

    Raises:
        ModelNotFoundError: the variable names a missing file, or no packaged model is installed.
    """
    env = os.environ.get(MODEL_ENV_VAR, "").strip()
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise ModelNotFoundError(f"${MODEL_ENV_VAR} names {path}, which is not a file; fix it or pass --model")
        return path
    if PACKAGED_MODEL.is_file():
        return PACKAGED_MODEL
    raise ModelNotFoundError(
        f"no model given and no packaged default model is installed (expected {PACKAGED_MODEL}); pass --model "
        f"with a .safetensors checkpoint (e.g. runs/NAME/best.safetensors) or an .onnx export, or set ${MODEL_ENV_VAR}"
    )


def open_model_file(path: str | os.PathLike[str], options: RuntimeOptions) -> dict[str, Any]:
    """The :class:`~pneumoscan.inference.predictor.Predictor` arguments for the model file ``path`` run by ``options.backend``:
    ``runner``, ``meta``, ``model`` (torch only), ``path``, ``version``, ``options``, ``reference``, ``checkpoint``
    (the ``.safetensors`` file; None for an ONNX file) and ``onnx_path`` (None with torch).

    Raises:
        CheckpointError: missing, unreadable, or not a pneumoscan model file; ``"torch"`` with an ONNX file.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: model file not found")
    sha256 = file_sha256(p)
    is_onnx = p.suffix.lower() == ".onnx"
    if options.backend == "torch":
        if is_onnx:
            raise CheckpointError(f"{p}: the torch backend needs the .safetensors checkpoint; an ONNX export runs "
                                  "with ONNX Runtime (--backend onnx)")
        return _open_torch(p, sha256, options)
    if is_onnx:
        session, meta = open_onnx_session(p, threads=options.threads, inter_op_threads=options.inter_op_threads,
                                          spin=options.spin)
        onnx_file, checkpoint = p, None
    else:
        from pneumoscan.inference.onnx_cache import open_for_checkpoint

        session, meta, onnx_file = open_for_checkpoint(p, sha256, threads=options.threads,
                                                       inter_op_threads=options.inter_op_threads, spin=options.spin)
        checkpoint = str(p)
    props = dict(session.get_modelmeta().custom_metadata_map)
    reference = Reference.from_checkpoint_parts(read_onnx_reference(onnx_file, props), meta.get("reference"))
    return {"runner": OnnxRunner(session), "meta": meta, "model": None, "path": str(p), "version": sha256[:12],
            "options": options, "reference": reference, "checkpoint": checkpoint, "onnx_path": str(onnx_file)}


def _open_torch(p: Path, sha256: str, options: RuntimeOptions) -> dict[str, Any]:
    require_torch("the torch backend (--backend torch)", advice="or use the default backend, ONNX Runtime")
    from pneumoscan.checkpoint import load_checkpoint
    from pneumoscan.gate.reference import reference_of
    from pneumoscan.inference.torch_scoring import TorchRunner, model_from_checkpoint

    ckpt = load_checkpoint(p)
    model = model_from_checkpoint(ckpt)
    return {"runner": TorchRunner(model, options), "meta": ckpt.meta, "model": model, "path": str(p),
            "version": sha256[:12], "options": dataclasses.replace(options, backend="torch"),
            "reference": reference_of(ckpt), "checkpoint": str(p), "onnx_path": None}
