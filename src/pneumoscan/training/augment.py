"""The study's augmentation as batched tensor ops (kornia), for training batches only.

The seed study (Keras ``ImageDataGenerator``) used rotation up to 30 degrees,
zoom 20 %, horizontal and vertical shift 10 % and horizontal flips. Here each
one is a switch and a strength in :class:`~pneumoscan.config.AugmentConfig`.
Intensity jitter (brightness, contrast, gamma) is an optional extra, off by
default, because the study did not use it.

Randomness comes from torch's global generator, which the training loop reseeds
every epoch from (seed, epoch, rank), so a resumed run draws the same
augmentations. A preview (:func:`save_augmentation_grid`) draws inside
``torch.random.fork_rng`` and leaves that stream alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import kornia.augmentation as K
import numpy as np
import torch
from torch import nn

from pneumoscan.config import AugmentConfig
from pneumoscan.utils import atomic_path

log = logging.getLogger(__name__)

__all__ = ["RandAugmentPipeline", "build_augmentation", "save_augmentation_grid"]


class RandAugmentPipeline(nn.Module):
    """Random geometric (and optionally intensity) augmentation of a batch.

    Input and output: float tensor (B, 1, H, W) with intensities in [0, 1].
    Geometry fills the border by replicating edge pixels, as Keras' default
    ``fill_mode="nearest"`` does, so no black corners appear that the network
    could learn as a cue.
    """

    def __init__(self, cfg: AugmentConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ops: list[nn.Module] = []
        if cfg.enabled:
            degrees = cfg.rotation_degrees if cfg.rotation else 0.0
            translate = (cfg.shift_fraction, cfg.shift_fraction) if cfg.shift else None
            scale = (1.0 - cfg.zoom_range, 1.0 + cfg.zoom_range) if cfg.zoom else None
            if degrees > 0 or translate is not None or scale is not None:
                ops.append(
                    K.RandomAffine(
                        degrees=degrees,
                        translate=translate,
                        scale=scale,
                        padding_mode="border",
                        resample="bilinear",
                        align_corners=False,
                        p=1.0,
                    )
                )
            if cfg.hflip and cfg.hflip_prob > 0:
                ops.append(K.RandomHorizontalFlip(p=cfg.hflip_prob))
            if cfg.intensity:
                if cfg.brightness > 0:
                    ops.append(K.RandomBrightness(brightness=(1 - cfg.brightness, 1 + cfg.brightness), p=1.0))
                if cfg.contrast > 0:
                    ops.append(K.RandomContrast(contrast=(1 - cfg.contrast, 1 + cfg.contrast), p=1.0))
                if cfg.gamma > 0:
                    ops.append(K.RandomGamma(gamma=(1 - cfg.gamma, 1 + cfg.gamma), p=1.0))
        self.ops = nn.Sequential(*ops)

    @property
    def is_identity(self) -> bool:
        return len(self.ops) == 0

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"augmentation expects (B, 1, H, W), got {tuple(x.shape)}")
        if self.is_identity:
            return x
        return self.ops(x).clamp_(0.0, 1.0)


def build_augmentation(cfg: AugmentConfig) -> RandAugmentPipeline:
    """Return the training augmentation described by ``cfg`` (identity when disabled)."""
    return RandAugmentPipeline(cfg)


def save_augmentation_grid(
    images_u8: np.ndarray, aug: RandAugmentPipeline, path: str | Path, *, copies: int = 4, seed: int = 0
) -> Path:
    """Write a PNG grid: each row is one original (left) followed by ``copies`` augmented draws.

    ``images_u8`` is (N, S, S) uint8 in 0..255. The draws come from torch's CPU generator seeded with ``seed``
    inside :func:`torch.random.fork_rng`, so the caller's random stream is not disturbed. Returns the path
    written (atomically).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images_u8)
    x = torch.from_numpy(np.ascontiguousarray(images_u8)).float().div_(255.0).unsqueeze(1)
    # The preview owns its random state (MONAI's habit): fork the CPU generator, seed only it, and the caller's
    # stream (CPU and CUDA) is left exactly as it was.
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        draws = [aug(x) for _ in range(copies)]
    fig, axes = plt.subplots(n, copies + 1, figsize=(1.6 * (copies + 1), 1.6 * n), squeeze=False)
    for i in range(n):
        axes[i][0].imshow(x[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[i][0].set_title("original" if i == 0 else "", fontsize=8)
        for j, d in enumerate(draws, start=1):
            axes[i][j].imshow(d[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
            axes[i][j].set_title(f"augmented {j}" if i == 0 else "", fontsize=8)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.tight_layout()
    out = Path(path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return out
