"""Tiny pneumoscan checkpoints for tests: a freshly initialised registered model saved with proper metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pneumoscan.checkpoint import save_checkpoint
from pneumoscan.models import create_model, default_preprocessing


def checkpoint_meta(model_name: str = "seed-cnn", image_size: int = 64, *, threshold: float | None = None,
                    temperature: float | None = None) -> dict[str, Any]:
    """Metadata as training writes it; ``operating_point``/``calibration`` only when given."""
    meta: dict[str, Any] = {
        "model": model_name,
        "config": {"model": {"name": model_name, "image_size": image_size}},
        "preprocessing": default_preprocessing(model_name, image_size).to_dict(),
        "classes": ["NORMAL", "PNEUMONIA"],
        "epoch": 1,
        "val_metrics": {"val_auc": 0.5},
    }
    if threshold is not None:
        meta["operating_point"] = {"threshold": threshold, "target_sensitivity": 0.95}
    if temperature is not None:
        meta["calibration"] = {"temperature": temperature}
    return meta


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine weights, so that every op matters in a comparison."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model


def make_checkpoint(path: str | Path, model_name: str = "seed-cnn", image_size: int = 64, *, seed: int = 0,
                    threshold: float | None = None, temperature: float | None = None,
                    pretrained: bool = False) -> Path:
    """Save a seeded ``model_name`` as a checkpoint at ``path``: untrained with BatchNorm randomised, or with
    the ImageNet backbone (``pretrained``, efficientnet-lite0 only) and a random head."""
    torch.manual_seed(seed)
    model = create_model(model_name, pretrained=pretrained)
    if not pretrained:
        randomize_batchnorm(model, seed)
    meta = checkpoint_meta(model_name, image_size, threshold=threshold, temperature=temperature)
    return save_checkpoint(path, model.state_dict(), meta)
