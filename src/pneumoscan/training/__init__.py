"""Training: the loop in named steps (:mod:`.loop`), the batched augmentation (:mod:`.augment`)."""

from __future__ import annotations

from pneumoscan.errors import RunExistsError
from pneumoscan.training.loop import TrainResult, ema_update_fn, load_run_config, resume, train

__all__ = ["RunExistsError", "TrainResult", "ema_update_fn", "load_run_config", "resume", "train"]
