"""Exponential moving average (EMA) of the weights, as torch's :class:`~torch.optim.swa_utils.AveragedModel`
keeps it, with an optional warm-up that lets the first, untrained weights fade out quickly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from pneumoscan.config import TrainConfig
from pneumoscan.errors import ConfigError

__all__ = ["build_ema", "ema_update_fn"]


def ema_update_fn(decay: float, warmup: bool) -> Callable[[list[torch.Tensor], list[torch.Tensor], Any], None]:
    """``multi_avg_fn`` for :class:`AveragedModel`: ``avg <- avg + (1 - d) * (current - avg)``, in place.

    ``d = decay``, or with ``warmup`` ``min(decay, (1 + n) / (10 + n))`` where ``n`` counts the updates so far.
    With ``warmup=False`` it is torch's ``get_ema_multi_avg_fn(decay)``. Integer buffers follow the model.
    """
    if not 0.0 < decay < 1.0:
        raise ConfigError(f"train.ema_decay must be in (0, 1) when EMA is on, got {decay}")
    if not warmup:
        return get_ema_multi_avg_fn(decay)

    @torch.no_grad()
    def update(avg: list[torch.Tensor], current: list[torch.Tensor], num_averaged: Any) -> None:
        # AveragedModel calls this once per (device, dtype) group. Integer buffers (BatchNorm's
        # num_batches_tracked) are counters, not weights: lerp is undefined for them, and an average of a
        # counter means nothing, so they follow the current model.
        if not (avg[0].is_floating_point() or avg[0].is_complex()):
            torch._foreach_copy_(avg, current)
            return
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        torch._foreach_lerp_(avg, current, 1.0 - d)

    return update


def build_ema(model: nn.Module, cfg: TrainConfig) -> AveragedModel | None:
    """The running average of ``model`` (weights and buffers) that ``cfg.ema_decay`` asks for; None when it is 0."""
    if cfg.ema_decay <= 0:
        return None
    return AveragedModel(model, multi_avg_fn=ema_update_fn(cfg.ema_decay, cfg.ema_warmup), use_buffers=True)
