"""The training step (pneumoscan.training.step), the allocator setting (training.allocator) and the GPU cache's
size check (data.cache), on the CPU. The CUDA path is tests/test_train_cuda.py."""

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from torch import nn

from pneumoscan.config import AugmentConfig, TrainConfig
from pneumoscan.data.cache import fits_on_device, images_on_device
from pneumoscan.errors import ConfigError
from pneumoscan.models import create_model, default_preprocessing
from pneumoscan.preprocessing import cached_rows_to_unit, normalize
from pneumoscan.training import allocator, resume, train
from pneumoscan.training.augment import build_augmentation
from pneumoscan.training.step import (BatchSource, EpochTally, StepOptions, amp_dtype, batches, compile_model,
                                      model_input, prepare_model, restore_optimizer_layout, step_options, train_step)
from test_train import make_blob_dataset, read_metrics, small_config

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def blob_data(tmp_path_factory):
    return make_blob_dataset(tmp_path_factory.mktemp("blobs"))


def test_amp_choices():
    assert amp_dtype("auto", CPU) is None  # bf16 on a CPU is only fast with AMX: not by default
    assert amp_dtype("off", CPU) is None
    assert amp_dtype("bf16", CPU) is torch.bfloat16
    with pytest.raises(ConfigError, match="train.amp"):
        amp_dtype("fp16", CPU)


def test_step_options_follow_the_config():
    opts = step_options(TrainConfig(), CPU)
    assert opts.channels_last and opts.amp is None and opts.memory_format == torch.channels_last
    assert step_options(TrainConfig(channels_last=False), CPU).memory_format == torch.contiguous_format


def test_prepare_model_makes_conv_weights_channels_last():
    model = prepare_model(create_model("efficientnet-lite0", pretrained=False), StepOptions(channels_last=True))
    convs = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.shape[-1] > 1]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)


def test_device_gathered_batches_equal_host_ones():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (10, 16, 16), dtype=np.uint8)
    labels = rng.integers(0, 2, 10)
    host = BatchSource(images, labels, CPU)
    dev = BatchSource(images, labels, CPU, on_device=torch.from_numpy(images.copy()))
    assert not host.on_device and dev.on_device
    rows = np.array([1, 4, 7])
    assert torch.equal(host.images_u8(rows), dev.images_u8(rows))
    assert host.images_u8(rows).shape == (3, 1, 16, 16) and host.images_u8(rows).dtype == torch.uint8
    assert torch.equal(host.labels(rows), torch.tensor(labels[rows], dtype=torch.float32))


def test_model_input_is_the_old_formula_and_channels_last_changes_only_the_layout():
    spec = default_preprocessing("seed-cnn", 64)
    aug = build_augmentation(AugmentConfig(intensity=True))
    images = np.random.default_rng(1).integers(0, 256, (4, 64, 64), dtype=np.uint8)
    rows = np.arange(4)
    torch.manual_seed(5)
    old = normalize(aug(cached_rows_to_unit(images, rows)), spec)
    source = BatchSource(images, np.zeros(4, dtype=np.int64), CPU)
    for channels_last in (False, True):
        torch.manual_seed(5)
        new = model_input(source.images_u8(rows), aug, spec, StepOptions(channels_last=channels_last))
        assert torch.equal(new, old)
        assert new.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def test_train_step_and_tally_match_a_plain_step():
    torch.manual_seed(0)
    model = create_model("seed-cnn", pretrained=False)
    twin = create_model("seed-cnn", pretrained=False)
    twin.load_state_dict(model.state_dict())
    x, y = torch.randn(4, 1, 64, 64), torch.tensor([0.0, 1.0, 1.0, 0.0])
    crit = nn.BCEWithLogitsLoss()
    opt, opt2 = torch.optim.AdamW(model.parameters()), torch.optim.AdamW(twin.parameters())
    model.train(), twin.train()
    torch.manual_seed(1)
    loss, logits = train_step(model, model, crit, opt, None, x, y, StepOptions())
    torch.manual_seed(1)
    opt2.zero_grad()
    ref = crit(twin(x).reshape(-1), y)
    ref.backward()
    opt2.step()
    assert torch.equal(loss, ref.detach()) and not loss.requires_grad
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))
    tally = EpochTally()
    tally.add(loss, logits, np.array([0, 1, 1, 0]))
    tally.add(loss, logits, np.array([0, 1, 1, 0]))
    total, seen, scores, labels = tally.totals()
    assert seen == 8 and total == pytest.approx(float(ref.detach()) * 8) and scores.shape == (8,) and labels.shape == (8,)


def test_bf16_autocast_on_the_cpu_runs_the_convolutions_in_bf16():
    torch.manual_seed(0)
    model = create_model("seed-cnn", pretrained=False)
    seen = []
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    opt = torch.optim.AdamW(model.parameters())
    loss, logits = train_step(model, model, nn.BCEWithLogitsLoss(), opt, None, torch.randn(2, 1, 64, 64),
                              torch.tensor([0.0, 1.0]), StepOptions(amp=torch.bfloat16))
    assert seen == [torch.bfloat16] and logits.dtype == torch.float32 and torch.isfinite(loss)


def test_batches_are_sorted_and_never_single():
    out = batches(np.array([5, 3, 9, 1, 7]), 2)
    assert [b.tolist() for b in out] == [[3, 5], [1, 9]]


def test_restored_optimizer_state_takes_the_parameter_layout():
    model = prepare_model(create_model("seed-cnn", pretrained=False), StepOptions(channels_last=True))
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 1, 64, 64)).sum().backward()
    opt.step()
    fresh = torch.optim.AdamW(model.parameters())
    saved = {k: v for k, v in opt.state_dict().items()}
    saved["state"] = {i: {k: (v.contiguous() if torch.is_tensor(v) else v) for k, v in s.items()}
                      for i, s in saved["state"].items()}
    fresh.load_state_dict(saved)
    restore_optimizer_layout(fresh)
    for p in model.parameters():
        assert fresh.state[p]["exp_avg"].stride() == p.stride()
        assert torch.equal(fresh.state[p]["exp_avg"], opt.state[p]["exp_avg"])


def test_gpu_cache_size_rule():
    assert fits_on_device(100, 1000, 0.25) and not fits_on_device(300, 1000, 0.25)
    assert not fits_on_device(100, 1000, 0.0) and not fits_on_device(0, 1000, 0.5)
    images = np.zeros((3, 8, 8), dtype=np.uint8)
    assert images_on_device(images, "cpu") is None  # on the CPU the memory map already is the cache


def test_allocator_is_tuned_once_on_glibc_and_left_alone_when_the_user_set_it(monkeypatch):
    monkeypatch.setattr(allocator, "_done", None)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert allocator.tune_allocator() is False
    monkeypatch.setattr(allocator, "_done", None)
    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_")
    for name in allocator.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    expected = sys.platform.startswith("linux") and allocator._glibc() is not None
    assert allocator.tune_allocator() is expected
    assert allocator.tune_allocator() is expected  # idempotent


def test_a_run_started_before_channels_last_existed_resumes_without_it(blob_data, tmp_path, monkeypatch):
    import pneumoscan.training.loop as train_mod

    cfg = small_config(blob_data, tmp_path / "cache", **{"train.epochs": 1})
    train(cfg, tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    for key in ("channels_last", "amp", "compile", "device_cache_fraction"):
        del saved["train"][key]
    saved["train"]["epochs"] = 2
    (tmp_path / "run" / "config.json").write_text(json.dumps(saved))
    seen = {}
    real_train = train_mod.train
    monkeypatch.setattr(train_mod, "train", lambda c, *a, **k: seen.setdefault("cfg", c) and real_train(c, *a, **k))
    resume(tmp_path / "run", progress=False)
    assert seen["cfg"].train.channels_last is False and seen["cfg"].train.amp == "off"
    assert seen["cfg"].train.compile is False


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("cc") is None, reason="torch.compile on the CPU "
                    "needs a C++ compiler")
def test_compile_flag_trains_and_keeps_plain_checkpoints(blob_data, tmp_path):
    # The cold compile is the cost of this test (tens of seconds on 2 cores): keep the model and epochs tiny.
    cfg = small_config(blob_data, tmp_path / "cache", **{"train.epochs": 1, "train.compile": "true"})
    result = train(cfg, tmp_path / "run", progress=False)
    rows = read_metrics(result.run_dir)
    assert len(rows) == 1 and np.isfinite(float(rows[0]["train_loss"]))
    from pneumoscan.checkpoint import load_checkpoint

    keys = load_checkpoint(result.best_checkpoint).state_dict.keys()
    assert not any(k.startswith("_orig_mod") for k in keys)


def test_compile_model_off_is_identity():
    m = nn.Linear(2, 2)
    assert compile_model(m, False) is m
