"""Training: the loop in named steps (:mod:`.loop`), its inputs (:mod:`.inputs`: split, cache, epoch order), the
batched augmentation (:mod:`.augment`), weight averaging (:mod:`.ema`), distributed setup (:mod:`.distributed`)
and the run folder's records (:mod:`.records`)."""

from __future__ import annotations

from pneumoscan.errors import RunExistsError
from pneumoscan.training.ema import ema_update_fn
from pneumoscan.training.loop import TrainResult, load_run_config, resume, train

__all__ = ["RunExistsError", "TrainResult", "ema_update_fn", "load_run_config", "resume", "train"]
