"""Run configuration: frozen dataclasses, loaded from TOML or YAML, with ``key=value`` overrides.

A :class:`Config` is saved into every run folder and every checkpoint, so a
result can always be traced back to the settings that produced it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pneumoscan.errors import ConfigError

__all__ = [
    "AugmentConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "ModelConfig",
    "TrainConfig",
    "apply_overrides",
    "default_data_root",
    "load_config",
]

#: Environment variable naming the data set folder (see README).
DATA_ENV_VAR = "PNEUMOSCAN_DATA"


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are split and cached."""

    #: Dataset folder (``<root>[/<split>]/<NORMAL|PNEUMONIA>/*``) or CSV manifest. Empty: use $PNEUMOSCAN_DATA.
    root: str = ""
    #: Sub-folder of ``root`` to read (e.g. ``train``); empty: ``root`` itself holds the label folders.
    split: str = ""
    #: Your own validation set (``pneumoscan train --val``): a folder ``<val>[/<val_split>]/<NORMAL|PNEUMONIA>/*``
    #: or a CSV manifest. Its images validate (early stopping, temperature, threshold) and the rest of ``root``
    #: trains; an image in both validates only, a patient in both is an error. Empty: the seeded patient-level
    #: split of ``root`` (``val_fraction``, ``split_seed``).
    val: str = ""
    #: Sub-folder of ``val`` to read, or the ``split`` value of its manifest's rows (e.g. ``val``); empty: all of it.
    val_split: str = ""
    #: Fraction of *patients* that go to validation (the seeded split; unused with ``val``).
    val_fraction: float = 0.1
    #: Seed of the patient-level split; the split is a pure function of (patient ids, seed). Unused with ``val``.
    split_seed: int = 42
    #: Folder of the decoded-image cache. Empty: ``<run or cwd>/.pneumoscan-cache``.
    cache_dir: str = ""
    #: Refuse images with more pixels than this (decompression-bomb guard).
    max_pixels: int = 60_000_000
    #: DataLoader-free batching: number of threads used to build the cache.
    num_workers: int = 2


@dataclass(frozen=True)
class ModelConfig:
    """Which network and how its inputs are made."""

    #: Registry name: ``seed-cnn``, ``deep-cnn`` or ``efficientnet-lite0``.
    name: str = "efficientnet-lite0"
    #: Side of the square input in pixels; images are resized (aspect not kept) to it.
    image_size: int = 224
    #: Load pretrained weights where the model has them.
    pretrained: bool = True
    #: Dropout before the classifier.
    dropout: float = 0.2
    #: A second output on the same backbone: the logit that a pneumonia is viral rather than bacterial, learned
    #: from the films whose cause is known (``personN_virus_M`` / ``personN_bacteria_M``); see
    #: :mod:`pneumoscan.onboarding.cause`. Off: the pneumonia output alone.
    cause_head: bool = False


@dataclass(frozen=True)
class AugmentConfig:
    """The study's geometric augmentation, plus optional intensity jitter. Training batches only."""

    enabled: bool = True
    rotation: bool = True
    #: Maximum rotation in degrees (uniform in ±value).
    rotation_degrees: float = 30.0
    zoom: bool = True
    #: Maximum relative zoom (uniform scale in [1-value, 1+value]).
    zoom_range: float = 0.2
    shift: bool = True
    #: Maximum horizontal and vertical shift as a fraction of the side.
    shift_fraction: float = 0.1
    hflip: bool = True
    #: Probability of a horizontal flip.
    hflip_prob: float = 0.5
    #: Intensity augmentation (off in the study): brightness, contrast and gamma jitter.
    intensity: bool = False
    brightness: float = 0.1
    contrast: float = 0.1
    gamma: float = 0.2


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, early stopping and class balance."""

    epochs: int = 15
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    #: ``cosine`` or ``none``.
    scheduler: str = "cosine"
    #: Stop when validation AUC has not improved for this many epochs.
    patience: int = 5
    #: Weight the positive class in the loss by n_negative / n_positive (the default way to fight imbalance).
    pos_weight: bool = True
    #: Draw training batches with a class-balanced sampler instead (switches pos_weight off).
    balanced_sampler: bool = False
    #: Exponential moving average of the weights (0 disables). Validation, the best checkpoint and the
    #: shipped weights are the average's.
    ema_decay: float = 0.0
    #: Ramp the EMA decay up as min(ema_decay, (1 + n) / (10 + n)) after n updates, so that the first,
    #: barely trained weights fade out quickly. Without it a slow decay keeps a large share of them in a
    #: short run (0.998 ** 870 = 18 % after 6 epochs of 145 steps).
    ema_warmup: bool = True
    seed: int = 0
    #: Weight of the cause output's loss beside the main one (with ``model.cause_head``); the cause loss counts only
    #: pneumonia films whose cause is known, and weights viral films by n_bacterial / n_viral among them.
    cause_weight: float = 1.0
    #: Threads used by torch on the CPU (0: torch's default).
    threads: int = 0
    #: Cap on training images per epoch (0: all); for quick experiments.
    max_train_images: int = 0
    #: ``cpu``, ``cuda`` or ``auto``.
    device: str = "auto"
    #: Keep the model's weights and activations channels-last (NHWC): about 1.7x per step on the CPU with
    #: EfficientNet-Lite0, and what tensor cores want on a GPU. Same results up to rounding.
    channels_last: bool = True
    #: Mixed precision of the forward pass: ``auto`` (bfloat16 autocast on CUDA, off on the CPU), ``bf16``
    #: (also on the CPU, where it is only fast with AMX or AVX512-BF16) or ``off``.
    amp: str = "auto"
    #: ``torch.compile`` the training forward and backward (fuses batch-norm and ReLU6). Costs a cold compile
    #: at the start of every run (about a minute on a 2-core CPU) and needs a C++ compiler on the CPU.
    compile: bool = False
    #: On CUDA, keep the decoded-image cache in GPU memory when it takes at most this fraction of the free
    #: memory (0 turns it off); batches are then gathered and augmented on the GPU without host copies.
    device_cache_fraction: float = 0.25
    #: Fine-tune: start from this checkpoint's weights (``pneumoscan train --init-from MODEL``), keeping its
    #: architecture, preprocessing and outputs (:mod:`pneumoscan.training.finetune`). Empty: train from
    #: ``model.pretrained`` weights or from scratch.
    init_from: str = ""


@dataclass(frozen=True)
class EvalConfig:
    """How the operating threshold is chosen and how uncertainty is reported."""

    #: The operating threshold never gives less than this sensitivity on validation...
    target_sensitivity: float = 0.95
    #: ...and among those thresholds it has the lowest cost ``miss_cost * FN + FP`` on validation: a missed
    #: pneumonia weighs ``miss_cost`` false alarms. 0 gives the highest threshold reaching the target.
    miss_cost: float = 3.0
    bootstrap_samples: int = 2000
    bootstrap_seed: int = 0
    #: Fit temperature scaling on validation at the end of training.
    calibrate: bool = True
    #: The lowest temperature a fit may set. Validation films the model nearly separates reward confidence: the fit
    #: there sharpens the scores (the model shipped until 2026-12 had 0.56, and at a simulated site 7 of 135 normal
    #: films scored 99 or more; ``benchmarks/calibration_shift.py``). A temperature below 1 claims more certainty than
    #: the network's own logits, which no film from elsewhere supports, so a fit below this floor uses the floor.
    min_temperature: float = 1.0


@dataclass(frozen=True)
class Config:
    """Everything that defines a run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        """Return the config as nested plain dicts (JSON- and TOML-safe)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        """Build a Config from nested dicts, rejecting unknown sections and keys."""
        return _build(cls, raw, prefix="")

    def replace(self, **overrides: Any) -> Config:
        """Return a copy with dotted-key overrides applied, e.g. ``replace(**{"train.lr": 0.01})``."""
        return apply_overrides(self, [f"{k}={v!r}" if isinstance(v, str) else f"{k}={json.dumps(v)}"
                                      for k, v in overrides.items()])


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, typ: Any, key: str) -> Any:
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        typ = args[0]
    if dataclasses.is_dataclass(typ):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be a table/section, got {type(value).__name__}")
        return _build(typ, value, prefix=key + ".")
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no", "on", "off"}:
            return value.lower() in {"true", "1", "yes", "on"}
        raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        try:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}") from None
    if typ is float:
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}") from None
    if typ is str:
        if not isinstance(value, str):
            return str(value)
        return value
    return value


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    hints = _field_types(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        where = prefix.rstrip(".") or "top level"
        raise ConfigError(
            f"unknown config key(s) {', '.join(prefix + u for u in unknown)} in {where}; "
            f"known: {', '.join(sorted(names))}"
        )
    kwargs = {name: _coerce(value, hints[name], prefix + name) for name, value in raw.items()}
    return cls(**kwargs)


def _parse_scalar(text: str) -> Any:
    """Parse the right-hand side of ``key=value`` the way TOML would, falling back to a bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(config: Config, overrides: list[str] | tuple[str, ...]) -> Config:
    """Apply ``section.key=value`` overrides and return a new Config.

    Raises:
        ConfigError: an override is malformed or names an unknown key.
    """
    raw = config.to_dict()
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form section.key=value")
        key, _, text = item.partition("=")
        parts = key.strip().split(".")
        node: Any = raw
        for i, part in enumerate(parts[:-1]):
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"override {item!r}: unknown section '{'.'.join(parts[: i + 1])}'")
            node = node[part]
        if not isinstance(node, dict) or parts[-1] not in node or isinstance(node[parts[-1]], dict):
            raise ConfigError(f"override {item!r}: unknown key '{key.strip()}'")
        node[parts[-1]] = _parse_scalar(text.strip())
    return Config.from_dict(raw)


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load a Config from a ``.toml``, ``.yaml``/``.yml`` or ``.json`` file (or defaults), then apply overrides.

    Raises:
        ConfigError: the file is missing, unparsable, or has unknown or mistyped keys.
    """
    config = Config()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"{p}: config file not found")
        text = p.read_text(encoding="utf-8")
        suffix = p.suffix.lower()
        try:
            if suffix == ".toml":
                raw = tomllib.loads(text)
            elif suffix in {".yaml", ".yml"}:
                import yaml

                raw = yaml.safe_load(text) or {}
            elif suffix == ".json":
                raw = json.loads(text)
            else:
                raise ConfigError(f"{p}: unsupported config format '{suffix}' (use .toml, .yaml or .json)")
        except ConfigError:
            raise
        except Exception as exc:  # parser errors differ per format
            raise ConfigError(f"{p}: cannot parse config: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"{p}: config must be a mapping of sections")
        try:
            config = Config.from_dict(raw)
        except ConfigError as exc:
            raise ConfigError(f"{p}: {exc}") from exc
    return apply_overrides(config, list(overrides))


def default_data_root() -> Path | None:
    """Return the data folder from ``$PNEUMOSCAN_DATA``, or None when it is unset."""
    value = os.environ.get(DATA_ENV_VAR, "").strip()
    return Path(value) if value else None
