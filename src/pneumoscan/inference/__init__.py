"""Running a model: everything between a file and its :class:`~pneumoscan.result.Result`.

* :mod:`.predictor`: :class:`Predictor`, one model file (a ``.safetensors`` checkpoint or its ONNX export) with its
  scope gate, drift check and operating threshold; every image it scores becomes one Result.
* :mod:`.files`: scoring files in bulk (decoding overlapped with the model, heatmaps, one Result per file).
* :mod:`.scoring`: the torch-free runners (ONNX Runtime), :class:`RuntimeOptions`, the decision rule.
* :mod:`.torch_scoring`: the torch side (rebuilding a network, :class:`TorchRunner`, cached and data-set scoring).
* :mod:`.backends`, :mod:`.onnx_cache`, :mod:`.export`: opening a model file with a backend; the ONNX export of a
  checkpoint, built once and cached; the export itself.
* :mod:`.pipeline`: the bounded, ordered producer/consumer that overlaps decoding with the model.
* :mod:`.occlusion`: the explanation (occlusion sensitivity, on any backend) and :mod:`.render`: heatmaps and
  overlays for people.
* :mod:`.protocols`: the typed seams (a runner, a predictor).
* :mod:`.provenance`: a model's site state and where its score was calibrated, in words, from its metadata alone.

Importing this package loads no torch: the names below are imported on first use (PEP 562), and the ONNX Runtime
path never needs torch.
"""

from __future__ import annotations

import importlib
from typing import Any

#: name -> module that defines it (loaded on first use)
_LAZY = {
    "Predictor": "pneumoscan.inference.predictor", "default_model_path": "pneumoscan.inference.predictor",
    "PACKAGED_MODEL": "pneumoscan.inference.predictor", "MODEL_ENV_VAR": "pneumoscan.inference.predictor",
    "RuntimeOptions": "pneumoscan.inference.scoring", "BACKENDS": "pneumoscan.inference.scoring",
    "score_files": "pneumoscan.inference.files",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pneumoscan.inference' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
