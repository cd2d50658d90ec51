"""Pieces the networks share: the classifier base (``forward_features`` + head, ``gradcam_layer``)."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["Classifier", "pooled_head"]



class Classifier(nn.Module):
    """``forward = head(forward_features(x))``; ``gradcam_layer`` is the module whose output is the last conv map."""

    head: nn.Module

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (N, num_classes), pooled features (N, C))``: the logits exactly as :meth:`forward` computes
        them, and the globally averaged last feature map the head sees (what the scope gate and the drift check
        compare with the training data)."""
        fmap = self.forward_features(x)
        return self.head(fmap), fmap.mean(dim=(2, 3))

    @property
    def gradcam_layer(self) -> nn.Module:
        # A property, not an attribute: assigning the module twice would duplicate its state-dict keys.
        raise NotImplementedError


def pooled_head(width: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Dropout(dropout), nn.Linear(width, num_classes))
