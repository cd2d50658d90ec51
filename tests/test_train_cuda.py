"""The GPU training path: bf16 autocast, channels-last, batches gathered and augmented on the device, the decoded
cache in GPU memory, resumable. Every test skips without CUDA. On a GPU machine:

    .venv/bin/pytest -q tests/test_train_cuda.py        # and benchmarks/train_speed.py --device cuda
"""

import logging

import numpy as np
import pytest
import torch
from torch import nn

from pneumoscan.config import AugmentConfig
from pneumoscan.data.cache import images_on_device
from pneumoscan.models import create_model, default_preprocessing
from pneumoscan.training import resume, train
from pneumoscan.training.augment import build_augmentation
from pneumoscan.training.step import BatchSource, model_input, prepare_model, step_options, train_step
from test_train import make_blob_dataset, read_metrics, small_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")


@pytest.fixture(scope="module")
def blob_data(tmp_path_factory):
    return make_blob_dataset(tmp_path_factory.mktemp("blobs"))


def test_cache_goes_to_the_gpu_when_it_fits_and_stays_home_when_it_does_not():
    images = np.random.default_rng(0).integers(0, 256, (50, 32, 32), dtype=np.uint8)
    on = images_on_device(images, CUDA, chunk_rows=16)
    assert on is not None and on.device.type == "cuda" and torch.equal(on.cpu(), torch.from_numpy(images))
    assert images_on_device(images, CUDA, max_fraction=1e-12) is None
    assert images_on_device(images, CUDA, max_fraction=0.0) is None


def test_steps_run_on_the_device_in_bf16_and_channels_last():
    from pneumoscan.config import TrainConfig

    opts = step_options(TrainConfig(), CUDA)
    assert opts.amp is torch.bfloat16 and opts.channels_last
    torch.manual_seed(0)
    model = prepare_model(create_model("efficientnet-lite0", pretrained=False), opts)
    dtypes = []
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    images = np.random.default_rng(1).integers(0, 256, (16, 64, 64), dtype=np.uint8)
    source = BatchSource(images, np.arange(16) % 2, CUDA, device_fraction=0.25)
    assert source.on_device
    spec = default_preprocessing("efficientnet-lite0", 64)
    aug = build_augmentation(AugmentConfig(intensity=True))
    opt = torch.optim.AdamW(model.parameters())
    crit = nn.BCEWithLogitsLoss()
    for step in range(3):
        rows = np.arange(step * 4, step * 4 + 8)
        u8 = source.images_u8(rows)
        assert u8.device.type == "cuda" and u8.dtype == torch.uint8
        x = model_input(u8, aug, spec, opts)
        assert x.device.type == "cuda" and x.is_contiguous(memory_format=torch.channels_last)
        loss, logits = train_step(model, model, crit, opt, None, x, source.labels(rows), opts)
        assert torch.isfinite(loss) and logits.dtype == torch.float32 and loss.device.type == "cuda"
    assert dtypes and set(dtypes) == {torch.bfloat16}


def test_host_batches_are_pinned_and_copied_to_the_device():
    images = np.random.default_rng(2).integers(0, 256, (8, 32, 32), dtype=np.uint8)
    source = BatchSource(images, np.zeros(8, dtype=np.int64), CUDA, device_fraction=0.0)
    assert not source.on_device
    u8 = source.images_u8(np.array([0, 3, 5]))
    assert u8.device.type == "cuda" and torch.equal(u8.cpu()[:, 0], torch.from_numpy(images[[0, 3, 5]]))


def test_a_cuda_run_trains_logs_its_path_and_resumes(blob_data, tmp_path, caplog):
    over = {"model.name": "'efficientnet-lite0'", "model.pretrained": "true", "train.device": "'cuda'",
            "train.epochs": 2, "train.patience": 10}
    cfg = small_config(blob_data, tmp_path / "cache", **over)
    with caplog.at_level(logging.INFO, logger="pneumoscan"):
        result = train(cfg.replace(**{"train.epochs": 1}), tmp_path / "run", progress=False)
    assert "autocast torch.bfloat16" in caplog.text and "gathered on the device" in caplog.text
    assert result.epochs_run == 1
    resumed = resume(tmp_path / "run", overrides=["train.epochs=2"], progress=False)
    rows = read_metrics(tmp_path / "run")
    assert resumed.epochs_run == 2 and [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        assert np.isfinite(float(r["train_loss"])) and np.isfinite(float(r["val_loss"]))


def test_augmentation_on_the_gpu_draws_what_it_draws_on_the_cpu():
    # kornia samples its parameters from torch's CPU generator whatever the batch's device, so the loop's seeding
    # decides the draws on a GPU too; only the warp's rounding differs.
    aug = build_augmentation(AugmentConfig(intensity=True))
    x = torch.rand(6, 1, 64, 64)
    torch.manual_seed(3)
    on_cpu = aug(x)
    torch.manual_seed(3)
    on_gpu = aug(x.to(CUDA))
    assert on_gpu.device.type == "cuda"
    assert torch.allclose(on_gpu.cpu(), on_cpu, atol=2e-3)
