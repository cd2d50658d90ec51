"""The study's baseline network (seed-cnn) and a deeper residual one (deep-cnn), both trained from scratch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pneumoscan.models.layers import Classifier, pooled_head
from pneumoscan.models.registry import register_model

__all__ = ["DeepCNN", "SeedCNN"]



class SeedCNN(Classifier):
    """The study's baseline: plain Conv3x3+ReLU+MaxPool blocks, global pool, Dense(256)+ReLU+Dropout, Dense(1)."""

    def __init__(self, num_classes: int = 1, dropout: float = 0.2, in_chans: int = 1,
                 widths: tuple[int, ...] = (32, 64, 128, 128, 256)) -> None:
        super().__init__()
        blocks, c = [], in_chans
        for i, w in enumerate(widths):
            layers: list[nn.Module] = [nn.Conv2d(c, w, 3, padding=1), nn.ReLU()]
            if i < len(widths) - 1:  # the last block keeps its resolution for Grad-CAM
                layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
            c = w
        self.features = nn.Sequential(*blocks)
        # Global pooling instead of Keras' Flatten: any input size works, and it exports to ONNX (an
        # adaptive pool to a fixed grid does not when the map size is not a multiple of the grid).
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(c, 256),
                                  nn.ReLU(), nn.Dropout(dropout), nn.Linear(256, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # no BatchNorm here, so keep activations at unit scale
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.features[-1]


register_model("seed-cnn", description="plain 5-block CNN from scratch, the study's baseline")(
    lambda *, pretrained, **kwargs: SeedCNN(**kwargs))


# ----------------------------------------------------------------------------- deep-cnn


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        nn.init.zeros_(self.bn2.weight)  # each block starts as the identity: easier to train from scratch
        self.shortcut = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + self.shortcut(x))


class DeepCNN(Classifier):
    """ResNet-18 layout at a quarter of the width: stem, 4 stages of 2 basic blocks, global pool, linear."""

    def __init__(self, num_classes: int = 1, dropout: float = 0.2, in_chans: int = 1,
                 widths: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], 7, 2, 3, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        stages, c = [], widths[0]
        for i, w in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(_BasicBlock(c, w, stride), _BasicBlock(w, w, 1)))
            c = w
        self.stages = nn.Sequential(*stages)
        self.head = pooled_head(c, num_classes, dropout)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x))

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.stages[-1]


register_model("deep-cnn", description="ResNet-18-style CNN (widths 32-256) with BatchNorm, from scratch")(
    lambda *, pretrained, **kwargs: DeepCNN(**kwargs))
