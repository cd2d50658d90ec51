"""Model registry and the three networks; their input is made by :mod:`pneumoscan.preprocessing`.

Every model takes ``(B, in_chans, H, W)`` float32 made by ``preprocessing.preprocess`` (``in_chans`` is 1:
normalised grayscale), works for any ``H, W >= 64`` (global pooling), and returns logits
``(B, num_classes)``; with the default ``num_classes=1`` that is the pneumonia logit.

As in timm, each registered model carries its input recipe: :func:`default_preprocessing` gives the
:class:`Preprocessing` its weights expect, and that spec is saved in the checkpoint.
"""

from __future__ import annotations

from pneumoscan.errors import UnknownModelError
from pneumoscan.models.cnn import DeepCNN, SeedCNN
from pneumoscan.models.efficientnet_lite import (
    LITE0_MEAN_RGB,
    LITE0_STD_RGB,
    EfficientNetLite0,
    EfficientNetLite0Backbone,
    fold_rgb_stem,
    load_lite0_state_dict,
)
from pneumoscan.models.registry import (
    count_parameters,
    create_model,
    default_preprocessing,
    has_pretrained,
    list_models,
    model_info,
    register_model,
)

__all__ = [
    "LITE0_MEAN_RGB", "LITE0_STD_RGB", "DeepCNN", "EfficientNetLite0", "EfficientNetLite0Backbone", "SeedCNN",
    "UnknownModelError", "count_parameters", "create_model", "default_preprocessing", "fold_rgb_stem",
    "has_pretrained", "list_models", "load_lite0_state_dict", "model_info", "register_model",
]
