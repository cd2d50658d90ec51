"""pneumoscan: decision support for pneumonia on pediatric chest X-rays.

Not a diagnosis. The model is a second reader that corroborates a clinician.

The public API is importable from the package (loaded on first use, so ``import pneumoscan`` stays quick)::

    from pneumoscan import Predictor, default_model_path, load_config
    p = Predictor.from_checkpoint(default_model_path())

Training and evaluation are imported from their packages (``pneumoscan.training.train``,
``pneumoscan.evaluation.evaluate``); the package re-exports them lazily too.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: name -> module that defines it
_LAZY = {
    "Predictor": "pneumoscan.inference.predictor", "Prediction": "pneumoscan.inference.predictor", "RuntimeOptions": "pneumoscan.inference.predictor",
    "default_model_path": "pneumoscan.inference.predictor", "load_model": "pneumoscan.inference.predictor",
    "Config": "pneumoscan.config", "load_config": "pneumoscan.config",
    "train": "pneumoscan.training", "evaluate": "pneumoscan.evaluation",
    "rechoose_operating_point": "pneumoscan.onboarding.operating_point", "PneumoscanError": "pneumoscan.errors",
    "read_image": "pneumoscan.io", "ImageError": "pneumoscan.errors", "Preprocessing": "pneumoscan.preprocessing",
    "index_dataset": "pneumoscan.data", "split_index": "pneumoscan.data",
    "load_checkpoint": "pneumoscan.checkpoint", "export_onnx": "pneumoscan.inference.export",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pneumoscan' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
