import numpy as np
import pytest
import torch
from PIL import Image

from pneumoscan.training.augment import build_augmentation, save_augmentation_grid
from pneumoscan.config import AugmentConfig

OFF = dict(rotation=False, zoom=False, shift=False, hflip=False, intensity=False)


def _batch(n=4, size=64):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, size, size, generator=g)
    x[:, :, :, : size // 4] = 1.0  # a bright left band makes flips and shifts visible
    return x


def test_disabled_is_identity():
    x = _batch()
    assert torch.equal(build_augmentation(AugmentConfig(enabled=False))(x), x)
    assert torch.equal(build_augmentation(AugmentConfig(**OFF))(x), x)


def test_flip_only_flips():
    x = _batch()
    aug = build_augmentation(AugmentConfig(**{**OFF, "hflip": True, "hflip_prob": 1.0}))
    assert torch.allclose(aug(x), torch.flip(x, dims=[3]))


@pytest.mark.parametrize("switch", ["rotation", "zoom", "shift", "intensity"])
def test_each_switch_changes_images_and_keeps_range(switch):
    x = _batch()
    aug = build_augmentation(AugmentConfig(**{**OFF, switch: True}))
    torch.manual_seed(1)
    y = aug(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert not torch.allclose(y, x)


def test_strength_is_respected_for_shift():
    # A 10 % shift of a 64 px image moves the band edge by at most ~6.4 px.
    x = torch.zeros(16, 1, 64, 64)
    x[:, :, :, 32:] = 1.0
    aug = build_augmentation(AugmentConfig(**{**OFF, "shift": True, "shift_fraction": 0.1}))
    torch.manual_seed(0)
    y = aug(x)
    edges = (y[:, 0, 32, :] > 0.5).float().argmax(dim=1)
    assert int((edges - 32).abs().max()) <= 7
    assert int((edges - 32).abs().max()) >= 1


def test_same_seed_same_draws():
    x = _batch()
    aug = build_augmentation(AugmentConfig())
    torch.manual_seed(5)
    a = aug(x)
    torch.manual_seed(5)
    b = aug(x)
    assert torch.equal(a, b)


def test_rejects_wrong_shape():
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        build_augmentation(AugmentConfig())(torch.rand(2, 3, 32, 32))


def test_grid_png_is_written_and_rng_untouched(tmp_path):
    images = (np.random.default_rng(0).random((3, 48, 48)) * 255).astype(np.uint8)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    out = save_augmentation_grid(images, build_augmentation(AugmentConfig()), tmp_path / "grid.png", copies=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width > 200 and im.height > 100


def test_grid_draws_depend_only_on_its_seed(tmp_path):
    """The preview owns its random state: the caller's global seed does not change it, its own seed does."""
    images = (np.random.default_rng(0).random((2, 48, 48)) * 255).astype(np.uint8)
    aug = build_augmentation(AugmentConfig())
    outs = []
    for name, global_seed, seed in (("a", 1, 7), ("b", 2, 7), ("c", 1, 8)):
        torch.manual_seed(global_seed)
        outs.append(save_augmentation_grid(images, aug, tmp_path / f"{name}.png", copies=2, seed=seed).read_bytes())
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]
