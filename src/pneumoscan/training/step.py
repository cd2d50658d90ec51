"""One training step and what feeds it, fast on the CPU and on a GPU.

- **Channels-last** (``train.channels_last``): the model's weights, and so its activations, are NHWC; on the CPU
  oneDNN's convolutions and batch-norm run about 1.7x faster that way, and on a GPU it is what tensor cores want.
- **bfloat16 autocast** (``train.amp``): on CUDA by default; the loss is computed in float32.
- **Data on the device**: a batch is gathered from the decoded cache as uint8, moved to the device (or gathered
  there, when the cache lives in GPU memory: :func:`pneumoscan.data.cache.images_on_device`), and only then
  converted, augmented (kornia, on the batch tensor) and normalised. Kornia draws its random parameters from
  torch's CPU generator whatever the device, so the seeding of the loop holds on a GPU too.
- **No host sync per step**: loss sums and training scores stay on the device until the epoch ends.
- ``torch.compile`` (``train.compile``) behind a flag, off by default: it fuses batch-norm and ReLU6, but costs a
  cold compile per run.

On the CPU with ``channels_last`` and ``amp`` off, a step computes exactly what the loop computed before this
module existed (same operations, same order), so seeded runs stay reproducible.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pneumoscan.config import TrainConfig
from pneumoscan.data.cache import images_on_device
from pneumoscan.errors import ConfigError
from pneumoscan.preprocessing import Preprocessing, normalize

log = logging.getLogger(__name__)

__all__ = ["BatchSource", "CauseLoss", "EpochTally", "StepOptions", "amp_dtype", "batches", "compile_model", "model_input",
           "prepare_model", "restore_optimizer_layout", "step_options", "train_step"]

AMP_CHOICES = ("auto", "bf16", "off")


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype ``train.amp`` asks for on ``device``: ``auto`` is bfloat16 on a CUDA device that supports
    it and None (float32) elsewhere; ``bf16`` is bfloat16 anywhere; ``off`` is None.

    Raises:
        ConfigError: an unknown value.
    """
    if amp not in AMP_CHOICES:
        raise ConfigError(f"train.amp must be one of {', '.join(AMP_CHOICES)}, got {amp!r}")
    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.bfloat16 if cuda_bf16 else None


@dataclass(frozen=True)
class StepOptions:
    """How a step runs: on ``device``, channels-last or not, under autocast to ``amp`` (None: float32)."""

    device: torch.device = torch.device("cpu")
    channels_last: bool = False
    amp: torch.dtype | None = None

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def step_options(cfg: TrainConfig, device: torch.device) -> StepOptions:
    """The :class:`StepOptions` of ``cfg`` on ``device``; on CUDA it also lets cuDNN pick its fastest kernels
    (the input shape is fixed) and matmuls use TF32."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return StepOptions(device=device, channels_last=cfg.channels_last, amp=amp_dtype(cfg.amp, device))


def prepare_model(model: nn.Module, opts: StepOptions) -> nn.Module:
    """``model`` moved to the device and, with ``channels_last``, to NHWC weights (in place; returned)."""
    return model.to(device=opts.device, memory_format=opts.memory_format)


def compile_model(net: nn.Module, enabled: bool) -> nn.Module:
    """``torch.compile(net)`` when ``enabled`` (the training forward and backward; validation and checkpoints use
    the uncompiled module, which shares its parameters), else ``net`` itself."""
    if not enabled:
        return net
    log.info("torch.compile: the first steps compile the model (a minute or more on a small CPU)")
    return torch.compile(net)  # type: ignore[return-value]


def restore_optimizer_layout(optimizer: torch.optim.Optimizer) -> None:
    """Give restored optimiser state the memory layout of its parameter (channels-last weights have channels-last
    moments in an uninterrupted run; ``load_state_dict`` gives contiguous ones), so that a resumed run computes
    exactly what an uninterrupted one does."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


class BatchSource:
    """Training batches from the decoded cache, delivered on the device.

    ``images`` is the cache (uint8 ``(N, S, S)``, a memory map); ``labels`` the int64 label of every row. On CUDA,
    with ``device_fraction > 0``, the whole cache is copied to GPU memory when it fits
    (:func:`~pneumoscan.data.cache.images_on_device`) and batches are gathered there; otherwise they are gathered
    from the map, pinned and copied without blocking.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, device: torch.device, *,
                 device_fraction: float = 0.0, on_device: torch.Tensor | None = None,
                 causes: np.ndarray | None = None) -> None:
        self.images = images
        self.device = device
        self.labels_ = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
        #: With a cause output: each row's cause target (1 viral, 0 bacterial, -1 unknown), else None.
        self.causes_ = None if causes is None else torch.from_numpy(np.asarray(causes, dtype=np.int64)).to(device)
        self.on_device_ = on_device if on_device is not None else images_on_device(images, device,
                                                                                max_fraction=device_fraction)

    @property
    def on_device(self) -> bool:
        """True when the images live in device memory."""
        return self.on_device_ is not None

    def images_u8(self, rows: np.ndarray) -> torch.Tensor:
        """uint8 ``(B, 1, S, S)`` on the device: ``images[rows]``."""
        if self.on_device_ is not None:
            index = torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(self.on_device_.device, non_blocking=True)
            return self.on_device_.index_select(0, index).unsqueeze(1)
        batch = torch.from_numpy(np.ascontiguousarray(self.images[rows])).unsqueeze(1)
        if self.device.type == "cuda":
            return batch.pin_memory().to(self.device, non_blocking=True)
        return batch.to(self.device)

    def labels(self, rows: np.ndarray) -> torch.Tensor:
        """float32 ``(B,)`` labels of ``rows`` on the device; with a cause output ``(B, 2)``: the label and the
        cause target (-1 where the cause is unknown: :class:`CauseLoss` leaves those out)."""
        index = torch.from_numpy(np.asarray(rows, dtype=np.int64)).to(self.labels_.device, non_blocking=True)
        y = self.labels_.index_select(0, index).float()
        if self.causes_ is None:
            return y
        return torch.stack([y, self.causes_.index_select(0, index).float()], dim=1)


class CauseLoss(nn.Module):
    """The loss of a network with a cause output (logits ``(B, 2)``, targets ``(B, 2)``): the pneumonia output's
    BCE (``pos_weight``, as without it) plus ``cause_weight`` times the cause output's BCE averaged over the films
    whose cause is known (target >= 0), viral films weighted by ``cause_pos_weight`` (n_bacterial / n_viral among
    the training films, as the main output is weighted). No host sync: a batch without a known cause adds 0."""

    def __init__(self, pos_weight: torch.Tensor, cause_pos_weight: torch.Tensor, cause_weight: float) -> None:
        super().__init__()
        self.register_buffer("pos_weight", pos_weight)
        self.register_buffer("cause_pos_weight", cause_pos_weight)
        self.cause_weight = float(cause_weight)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        main = F.binary_cross_entropy_with_logits(logits[:, 0], targets[:, 0], pos_weight=self.pos_weight)
        known = (targets[:, 1] >= 0).float()
        per_film = F.binary_cross_entropy_with_logits(logits[:, 1], targets[:, 1].clamp(min=0.0),
                                                      pos_weight=self.cause_pos_weight, reduction="none")
        cause = (per_film * known).sum() / known.sum().clamp(min=1.0)
        return main + self.cause_weight * cause


def model_input(u8: torch.Tensor, aug: nn.Module, spec: Preprocessing, opts: StepOptions) -> torch.Tensor:
    """uint8 ``(B, 1, S, S)`` on the device -> augmented (in [0, 1]) and normalised float32 model input, in the
    step's memory format. The same operations as ``normalize(aug(cached_rows_to_unit(...)))``."""
    x = normalize(aug(u8.float().div_(255.0)), spec)
    return x.contiguous(memory_format=opts.memory_format) if opts.channels_last else x


def train_step(net: nn.Module, model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
               ema: Any, x: torch.Tensor, y: torch.Tensor, opts: StepOptions) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward (``net``: maybe DDP- or compile-wrapped ``model``) under the step's autocast, float32 loss, backward,
    optimiser step and EMA update of ``model``. Returns ``(loss, logits)``, detached, on the device (no host sync)."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(device_type=opts.device.type, dtype=opts.amp or torch.float32, enabled=opts.amp is not None):
        logits = net(x).reshape(len(x), -1)
    logits = logits.float()
    if logits.shape[1] == 1:  # the pneumonia output alone
        logits = logits[:, 0]
    loss = criterion(logits, y)
    loss.backward()
    optimizer.step()
    if ema is not None:
        ema.update_parameters(model)
    main = logits if logits.ndim == 1 else logits[:, 0]  # the tally's training AUC is the main output's
    return loss.detach(), main.detach()


@dataclass
class EpochTally:
    """Running loss sum and training scores of an epoch, kept on the device until :meth:`totals`."""

    loss_sum: torch.Tensor | None = None
    seen: int = 0
    scores: list[torch.Tensor] = field(default_factory=list)
    labels: list[np.ndarray] = field(default_factory=list)

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: np.ndarray) -> None:
        n = len(labels)
        # float64, as the loop's former float(loss) * n summed in Python: the same numbers, without a sync.
        term = loss.double() * n
        self.loss_sum = term if self.loss_sum is None else self.loss_sum + term
        self.seen += n
        self.scores.append(torch.sigmoid(logits))
        self.labels.append(labels)

    def mean_loss(self) -> float:
        """The running mean loss (syncs with the device: for a progress bar, not every step on a GPU)."""
        return float(self.loss_sum) / self.seen if self.seen else float("nan")

    def totals(self) -> tuple[float, int, np.ndarray, np.ndarray]:
        """``(loss_sum, seen, scores, labels)`` on the host: one transfer for the epoch."""
        scores = torch.cat(self.scores).cpu().numpy() if self.scores else np.empty(0, dtype=np.float32)
        labels = np.concatenate(self.labels) if self.labels else np.empty(0, dtype=np.int64)
        loss_sum = float(self.loss_sum) if self.loss_sum is not None else 0.0
        return loss_sum, self.seen, scores, labels


def batches(order: np.ndarray, batch_size: int) -> Sequence[np.ndarray]:
    """``order`` cut into batches (each sorted: sequential reads from the memory map; order within a batch does not
    matter), without a last batch of one (batch norm cannot train on it)."""
    steps = [np.sort(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]
    return [s for s in steps if len(s) >= 2]
