"""Training: smoke runs per model, early stopping, checkpoints, resume after SIGKILL, DDP, reproducibility."""

import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pneumoscan.checkpoint import load_checkpoint, load_state
from pneumoscan.config import Config, apply_overrides
from pneumoscan.models import create_model
from pneumoscan.training import RunExistsError, resume, train

SIZE = 64


def make_blob_dataset(root: Path, n_per_class: int = 16, size: int = 96, seed: int = 0, first: int = 0) -> Path:
    """Synthetic X-ray-like images: PNEUMONIA ones carry a bright blob, NORMAL ones do not. One image per patient,
    the patients numbered from ``first``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for label, cls in enumerate(["NORMAL", "PNEUMONIA"]):
        folder = root / cls
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(first, first + n_per_class):
            img = rng.normal(90, 20, (size, size))
            if label:
                cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
                img += 120 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 10) ** 2))
            name = f"person{i}_bacteria_{i}.jpeg" if label else f"IM-{i:04d}-0001.jpeg"
            Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / name, quality=95)
    return root


@pytest.fixture(scope="module")
def blob_data(tmp_path_factory):
    return make_blob_dataset(tmp_path_factory.mktemp("blobs"))


def small_config(data: Path, cache: Path, **over) -> Config:
    base = [
        f"data.root='{data}'", f"data.cache_dir='{cache}'", "data.val_fraction=0.25", "data.num_workers=1",
        f"model.image_size={SIZE}", "model.name='seed-cnn'", "model.pretrained=false",
        "train.epochs=2", "train.batch_size=8", "train.threads=1", "train.lr=0.001", "train.seed=3",
    ]
    return apply_overrides(Config(), base + [f"{k}={v}" for k, v in over.items()])


def read_metrics(run: Path) -> list[dict]:
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("model", ["seed-cnn", "deep-cnn", "efficientnet-lite0"])
def test_smoke_two_epochs(model, blob_data, tmp_path):
    pretrained = "true" if model == "efficientnet-lite0" else "false"
    cfg = small_config(blob_data, tmp_path / "cache", **{"model.name": f"'{model}'", "model.pretrained": pretrained})
    result = train(cfg, tmp_path / "run", progress=False)
    run = result.run_dir
    rows = read_metrics(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        for key in ("train_loss", "val_loss", "val_auc", "val_sensitivity", "val_specificity"):
            assert np.isfinite(float(r[key])), (key, r)
    for name in ("config.json", "best.safetensors", "best.json", "state.safetensors", "split.csv",
                 "loss.png", "auc.png", "augmentations.png", "timing.json"):
        assert (run / name).is_file(), name
    assert json.loads((run / "config.json").read_text())["model"]["name"] == model


def test_checkpoint_round_trip(blob_data, tmp_path):
    cfg = small_config(blob_data, tmp_path / "cache")
    result = train(cfg, tmp_path / "run", progress=False)
    ckpt = load_checkpoint(result.best_checkpoint)
    meta = ckpt.meta
    assert meta["model"] == "seed-cnn"
    assert Config.from_dict(meta["config"]) == cfg
    assert meta["preprocessing"]["image_size"] == SIZE
    assert meta["classes"] == ["NORMAL", "PNEUMONIA"]
    assert meta["epoch"] == result.best_epoch
    assert meta["val_metrics"]["val_auc"] == pytest.approx(result.best_val_auc)
    model = create_model("seed-cnn")
    model.load_state_dict(ckpt.state_dict)  # strict: every key matches
    # The sidecar JSON is a readable copy of the embedded metadata.
    assert json.loads(result.best_checkpoint.with_suffix(".json").read_text())["epoch"] == meta["epoch"]


def test_early_stopping_triggers(blob_data, tmp_path):
    # With a learning rate of 0 the validation AUC can never improve after epoch 1.
    cfg = small_config(blob_data, tmp_path / "cache", **{"train.epochs": 10, "train.patience": 2, "train.lr": 0.0})
    result = train(cfg, tmp_path / "run", progress=False)
    assert result.stopped_early
    assert result.epochs_run == 3 and result.best_epoch == 1
    assert len(read_metrics(tmp_path / "run")) == 3


def test_refuses_to_overwrite_a_run(blob_data, tmp_path):
    cfg = small_config(blob_data, tmp_path / "cache", **{"train.epochs": 1})
    train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(RunExistsError, match="--resume"):
        train(cfg, tmp_path / "run", progress=False)


def test_same_seed_same_metrics(blob_data, tmp_path):
    cfg = small_config(blob_data, tmp_path / "cache")
    train(cfg, tmp_path / "a", progress=False)
    train(cfg, tmp_path / "b", progress=False)
    assert (tmp_path / "a" / "metrics.csv").read_text() == (tmp_path / "b" / "metrics.csv").read_text()


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pneumoscan.config import load_config
    from pneumoscan.training import train

    def kill_mid_epoch(event, info):
        if event == "batch_end" and info["epoch"] == 2 and info["step"] == 1:
            os.kill(os.getpid(), signal.SIGKILL)

    train(load_config(sys.argv[1]), sys.argv[2], callbacks=[kill_mid_epoch], progress=False)
    """
)


def test_resume_after_sigkill_matches_uninterrupted(blob_data, tmp_path):
    cfg = small_config(blob_data, tmp_path / "cache", **{"train.epochs": 3, "train.patience": 10})
    reference = train(cfg, tmp_path / "ref", progress=False)

    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(cfg.to_json())
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.run([sys.executable, str(script), str(cfg_file), str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr  # died by SIGKILL in the middle of epoch 2
    assert load_state(tmp_path / "run" / "state.safetensors")["epoch"] == 1
    assert len(read_metrics(tmp_path / "run")) == 1

    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    stale = tmp_path / "run" / f".augmentations.png.{dead}.0badc0de.tmp"  # what SIGKILL inside a write leaves
    stale.write_bytes(b"half a png")
    os.utime(stale, (0, 0))
    resumed = resume(tmp_path / "run", progress=False)
    assert resumed.epochs_run == 3
    assert not stale.exists() and not list((tmp_path / "run").glob(".*.tmp"))
    assert (tmp_path / "run" / "metrics.csv").read_text() == (tmp_path / "ref" / "metrics.csv").read_text()
    a = load_state(tmp_path / "ref" / "state.safetensors")["model"]
    b = load_state(tmp_path / "run" / "state.safetensors")["model"]
    for key in a:
        # Documented tolerance: 1e-6 absolute. On the CPU with a fixed thread count the replay is exact.
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    assert reference.best_epoch == resumed.best_epoch


@pytest.mark.skipif(shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
                    reason="torchrun not installed")
def test_ddp_two_processes_gloo(blob_data, tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    run = tmp_path / "ddp"
    cmd = [
        torchrun, "--standalone", "--nproc_per_node=2", "-m", "pneumoscan", "-v", "train",
        "--data", str(blob_data), "--out", str(run), "--no-progress",
        "--set", f"data.cache_dir='{tmp_path / 'cache'}'", "--set", "data.val_fraction=0.25",
        "--set", "model.name='seed-cnn'", "--set", "model.pretrained=false", "--set", f"model.image_size={SIZE}",
        "--set", "train.epochs=2", "--set", "train.batch_size=4", "--set", "train.threads=1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stderr
    for rank in (0, 1):
        assert f"rank {rank}/2: epoch 1 trained on" in log, log[-3000:]
        assert f"rank {rank}/2: epoch 2 trained on" in log
    rows = read_metrics(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2]  # one writer: no duplicated rows
    state = load_state(run / "state.safetensors")
    n_train_total = sum(1 for line in (run / "split.csv").read_text().splitlines()[1:] if line.endswith(",train"))
    # Metrics were reduced across ranks: the loss covers both shards and the AUC the whole validation split.
    assert state["history"][0]["n_train"] == 2 * (n_train_total // 2)
    n_val = sum(1 for line in (run / "split.csv").read_text().splitlines()[1:] if line.endswith(",val"))
    assert state["history"][0]["n_val"] == n_val
    written = sorted(p.name for p in run.iterdir())
    assert written == sorted(["auc.png", "augmentations.png", "best.json", "best.safetensors", "config.json",
                              "loss.png", "metrics.csv", "split.csv", "state.safetensors", "timing.json",
                              "val_scores.csv"])


def test_ema_run_also_reports_the_raw_weights(blob_data, tmp_path):
    """With EMA on, metrics.csv says what the average buys: val AUC of the averaged and of the raw weights."""
    cfg = small_config(blob_data, tmp_path / "cache", **{"train.ema_decay": 0.9})
    train(cfg, tmp_path / "run", progress=False)
    rows = read_metrics(tmp_path / "run")
    assert len(rows) == 2
    for r in rows:
        assert 0.0 <= float(r["val_auc_raw"]) <= 1.0 and 0.0 <= float(r["val_auc"]) <= 1.0
    # The raw weights at the last epoch are those kept in state.safetensors: their AUC is reproducible from it.
    from pneumoscan import metrics as M
    from pneumoscan.data import build_cache, index_dataset
    from pneumoscan.models import default_preprocessing
    from pneumoscan.inference.scoring import score_cached as score_images

    state = load_state(tmp_path / "run" / "state.safetensors")
    model = create_model("seed-cnn", pretrained=False)
    model.load_state_dict(state["model"])
    split = list(csv.DictReader(open(tmp_path / "run" / "split.csv", newline="")))
    val_paths = {r["path"] for r in split if r["split"] == "val"}
    index = index_dataset(blob_data)
    cache = build_cache(index.records, SIZE, tmp_path / "cache")
    rows_val = np.array([i for i, r in enumerate(cache.records) if r.path in val_paths])
    scores = score_images(model, cache.images, rows_val, default_preprocessing("seed-cnn", SIZE))
    assert M.roc_auc(cache.labels[rows_val], scores) == pytest.approx(float(rows[-1]["val_auc_raw"]), abs=1e-5)


def test_no_raw_column_without_ema(blob_data, tmp_path):
    train(small_config(blob_data, tmp_path / "cache"), tmp_path / "run", progress=False)
    assert "val_auc_raw" not in read_metrics(tmp_path / "run")[0]


def test_ema_warmup_fades_the_first_weights_out():
    """Without warm-up a slow decay keeps a large share of the first weights; with it they fade out fast."""
    from torch.optim.swa_utils import AveragedModel

    from pneumoscan.training import ema_update_fn

    def share_of_start(warmup: bool) -> float:
        m = torch.nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            m.weight.fill_(0.0)
        ema = AveragedModel(m, multi_avg_fn=ema_update_fn(0.998, warmup), use_buffers=True)
        ema.update_parameters(m)  # the average starts at 0
        with torch.no_grad():
            m.weight.fill_(1.0)
        for _ in range(869):
            ema.update_parameters(m)
        return 1.0 - float(ema.module.weight.detach())

    assert share_of_start(False) == pytest.approx(0.998 ** 869, rel=1e-3)  # about 18 %
    assert share_of_start(True) < 1e-3
    with pytest.raises(Exception, match="ema_decay"):
        ema_update_fn(1.0, True)


@pytest.mark.parametrize("warmup", [False, True])
def test_ema_handles_the_integer_buffers_of_batchnorm(warmup):
    """deep-cnn and efficientnet-lite0 have BatchNorm, whose num_batches_tracked is int64: the warm-up EMA
    once crashed on it ("lerp not implemented for 'Long'") at the first update of every such run."""
    from torch.optim.swa_utils import AveragedModel

    from pneumoscan.training import ema_update_fn

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    ema = AveragedModel(m, multi_avg_fn=ema_update_fn(0.5, warmup), use_buffers=True)
    start = {k: v.clone() for k, v in m.state_dict().items()}
    m.train()
    for _ in range(3):
        m(torch.randn(4, 1, 8, 8))
        ema.update_parameters(m)
    avg = ema.module.state_dict()
    assert avg["1.num_batches_tracked"].dtype == torch.int64
    if warmup:
        assert int(avg["1.num_batches_tracked"]) == 3  # follows the model
    # The float buffers are averaged: strictly between the start and the current running mean.
    now = m.state_dict()["1.running_mean"]
    assert not torch.equal(avg["1.running_mean"], now) and not torch.equal(avg["1.running_mean"], start["1.running_mean"])


def test_ema_trains_a_batchnorm_model_end_to_end(blob_data, tmp_path):
    """The default EMA (warm-up on) on a model with BatchNorm buffers trains and reports both AUCs."""
    cfg = small_config(blob_data, tmp_path / "cache", **{"train.ema_decay": 0.9, "train.epochs": 1,
                                                        "model.name": "'deep-cnn'"})
    assert cfg.train.ema_warmup is True
    train(cfg, tmp_path / "run", progress=False)
    (row,) = read_metrics(tmp_path / "run")
    assert 0.0 <= float(row["val_auc"]) <= 1.0 and 0.0 <= float(row["val_auc_raw"]) <= 1.0


def test_resume_keeps_the_behaviour_of_a_run_started_before_a_key_existed(blob_data, tmp_path, monkeypatch):
    """A run whose config.json predates train.ema_warmup resumes with the EMA it started with (no warm-up)."""
    import pneumoscan.training.loop as train_mod

    cfg = small_config(blob_data, tmp_path / "cache", **{"train.ema_decay": 0.9, "train.epochs": 1})
    train(cfg, tmp_path / "run", progress=False)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    del saved["train"]["ema_warmup"]
    saved["train"]["epochs"] = 2
    (tmp_path / "run" / "config.json").write_text(json.dumps(saved))
    seen = {}
    real_train = train_mod.train
    monkeypatch.setattr(train_mod, "train", lambda c, *a, **k: seen.setdefault("cfg", c) and real_train(c, *a, **k))
    resume(tmp_path / "run", progress=False)
    assert seen["cfg"].train.ema_warmup is False and seen["cfg"].train.epochs == 2


def test_a_model_without_pretrained_weights_trains_from_scratch_and_says_so(blob_data, tmp_path, caplog):
    """`--set model.name=seed-cnn` alone (model.pretrained defaults to true) trains, and --resume works."""
    from pneumoscan.cli import main

    run = tmp_path / "run"
    common = ["--set", f"data.cache_dir='{tmp_path / 'cache'}'", "--set", "data.val_fraction=0.25",
              "--set", "data.num_workers=1", "--set", f"model.image_size={SIZE}", "--set", "train.batch_size=8",
              "--set", "train.threads=1"]
    with caplog.at_level("WARNING", logger="pneumoscan.training.loop"):
        assert main(["train", "--data", str(blob_data), "--out", str(run), "--set", "model.name=seed-cnn",
                     "--set", "train.epochs=1", "--no-progress", *common]) == 0
    assert "seed-cnn has no pretrained weights: training from scratch" in caplog.text
    assert json.loads((run / "config.json").read_text())["model"]["pretrained"] is False  # what happened
    assert load_checkpoint(run / "best.safetensors").meta["config"]["model"]["pretrained"] is False
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2", "--no-progress"]) == 0
    assert [int(r["epoch"]) for r in read_metrics(run)] == [1, 2]


def test_undecodable_images_are_named_even_when_the_cache_is_reused(blob_data, tmp_path, caplog):
    data = tmp_path / "data"
    shutil.copytree(blob_data, data)
    (data / "NORMAL" / "IM-0900-0001.jpeg").write_bytes(b"")
    (data / "PNEUMONIA" / "person900_virus_1.jpeg").write_text("=HYPERLINK(1)")
    cfg = small_config(data, tmp_path / "cache", **{"train.epochs": 1})
    train(cfg, tmp_path / "first", progress=False)  # builds the cache
    caplog.clear()
    with caplog.at_level("WARNING"):
        train(cfg, tmp_path / "run", progress=False)  # reuses it: nothing is decoded, yet the files are named
    text = caplog.text
    assert "IM-0900-0001.jpeg" in text and "person900_virus_1.jpeg" in text and "empty" in text
    assert "2 image(s) could not be decoded and were left out" in text
    with open(tmp_path / "run" / "failed_images.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(Path(r["path"]).name for r in rows) == ["IM-0900-0001.jpeg", "person900_virus_1.jpeg"]
    assert all(r["reason"] for r in rows)


def test_failed_images_csv_is_safe_for_spreadsheets_and_goes_when_there_are_none(tmp_path):
    from pneumoscan.training.inputs import write_failed_images as _write_failed_images

    path = tmp_path / "failed_images.csv"
    _write_failed_images(path, [("/d/=cmd.png", "-: damaged"), ("/d/ok.png", "file not found")])
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows == [{"path": "/d/=cmd.png", "reason": "'-: damaged"}, {"path": "/d/ok.png", "reason": "file not found"}]
    _write_failed_images(path, [])
    assert not path.exists()


# --------------------------------------------------------------------------- train --val: the user's validation set


def read_split(run: Path) -> dict[str, set[str]]:
    """split.csv as {"train": paths, "val": paths} (absolute paths)."""
    out: dict[str, set[str]] = {"train": set(), "val": set()}
    with open(run / "split.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            out[row["split"]].add(os.path.normpath(os.path.join(run, row["path"])))
    return out


def files_under(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*.jpeg")}


@pytest.fixture(scope="module")
def val_folder(tmp_path_factory):
    """A validation folder of other patients (numbered from 100) than blob_data's."""
    return make_blob_dataset(tmp_path_factory.mktemp("val"), n_per_class=5, seed=1, first=100)


def test_seeded_split_is_recorded_and_hashes_are_written(blob_data, tmp_path):
    """Without --val: the checkpoint says the validation set is the seeded patient split, and carries the content
    hashes of the training and validation films."""
    from pneumoscan.onboarding.trainset import hash_files, overlap

    result = train(small_config(blob_data, tmp_path / "cache", **{"train.epochs": 1}), tmp_path / "run", progress=False)
    ckpt = load_checkpoint(result.best_checkpoint)
    sides = read_split(result.run_dir)
    assert ckpt.meta["validation"] == {"source": "seeded patient split", "seed": 42, "fraction": 0.25,
                                       "n_images": len(sides["val"]), "n_patients": len(sides["val"])}
    assert ckpt.meta["config"]["data"]["val"] == ""
    assert ckpt.extra["trainset.train"].numel() == len(sides["train"]) == 24
    assert ckpt.extra["trainset.val"].numel() == len(sides["val"]) == 8
    assert ckpt.meta["trainset"] == {"n_train": 24, "n_val": 8, "n_on_both_sides": 0, "unreadable": 0}
    # A training film under another name is still known as one; so is a validation film; a new film is not.
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    one_train, one_val = min(sides["train"]), min(sides["val"])
    shutil.copy(one_train, renamed / "a.jpeg")
    shutil.copy(one_val, renamed / "b.jpeg")
    make_blob_dataset(renamed / "new", n_per_class=1, seed=9)
    paths = [renamed / "a.jpeg", renamed / "b.jpeg", *sorted((renamed / "new").rglob("*.jpeg"))]
    found = overlap(ckpt, hash_files(paths))
    assert found.known and found.train == [0] and found.val == [1]


def test_val_folder_is_exactly_the_validation_and_resume_keeps_it(blob_data, val_folder, tmp_path):
    """`train --val FOLDER` (CLI): those images and only those validate (split.csv, val_scores.csv, the epoch's
    n_val); all of --data trains; config and checkpoint record it; --resume continues with the same split."""
    from pneumoscan.cli import main

    run = tmp_path / "run"
    common = ["--set", f"data.cache_dir='{tmp_path / 'cache'}'", "--set", "data.num_workers=1",
              "--set", "model.name=seed-cnn", "--set", f"model.image_size={SIZE}", "--set", "train.batch_size=8",
              "--set", "train.threads=1", "--set", "train.seed=3", "--no-progress"]
    assert main(["train", "--data", str(blob_data), "--val", str(val_folder), "--out", str(run),
                 "--set", "train.epochs=1", *common]) == 0
    sides = read_split(run)
    assert sides["val"] == files_under(val_folder) and sides["train"] == files_under(blob_data)
    with open(run / "val_scores.csv", newline="") as fh:
        assert {r["path"] for r in csv.DictReader(fh)} == files_under(val_folder)  # the threshold's images
    history = load_state(run / "state.safetensors")["history"]
    assert history[0]["n_val"] == 10 and history[0]["n_train"] == 32  # early stopping's images
    assert json.loads((run / "config.json").read_text())["data"]["val"] == str(val_folder)
    ckpt = load_checkpoint(run / "best.safetensors")
    assert ckpt.meta["config"]["data"]["val"] == str(val_folder)
    assert ckpt.meta["validation"] == {"source": "user", "path": str(val_folder), "split": None,
                                       "moved_from_training": 0, "n_images": 10, "n_patients": 10}
    assert json.loads((run / "best.json").read_text())["validation"]["source"] == "user"
    assert ckpt.extra["trainset.train"].numel() == 32 and ckpt.extra["trainset.val"].numel() == 10

    split_before = (run / "split.csv").read_text()
    assert main(["train", "--resume", str(run), "--set", "train.epochs=2", "--no-progress"]) == 0
    assert [int(r["epoch"]) for r in read_metrics(run)] == [1, 2]
    assert (run / "split.csv").read_text() == split_before
    assert all(row["n_val"] == 10 for row in load_state(run / "state.safetensors")["history"])
    assert load_checkpoint(run / "best.safetensors").meta["validation"]["source"] == "user"


def test_val_manifest_takes_images_listed_on_both_sides_out_of_training(blob_data, tmp_path, caplog):
    """`data.val` = a CSV manifest that lists some of --data's own images: they validate only, and the log says so.
    With `data.val_split` only the manifest's rows of that split are read."""
    normal, pneumonia = sorted((blob_data / "NORMAL").glob("*.jpeg")), sorted((blob_data / "PNEUMONIA").glob("*.jpeg"))
    listed, other = normal[:4] + pneumonia[:4], normal[4:6] + pneumonia[4:6]
    manifest = tmp_path / "val.csv"
    manifest.write_text("path,label,split\n" + "".join(f"{p},{p.parent.name},val\n" for p in listed)
                        + "".join(f"{p},{p.parent.name},train\n" for p in other))
    cfg = small_config(blob_data, tmp_path / "cache", **{"train.epochs": 1, "data.val": f"'{manifest}'",
                                                         "data.val_split": "val"})
    with caplog.at_level("WARNING", logger="pneumoscan.training.inputs"):
        result = train(cfg, tmp_path / "run", progress=False)
    assert "8 image(s) of the training data are also in the validation set" in caplog.text
    sides = read_split(result.run_dir)
    assert sides["val"] == {str(p) for p in listed}
    assert sides["train"] == files_under(blob_data) - sides["val"]
    meta = load_checkpoint(result.best_checkpoint).meta
    assert meta["validation"]["moved_from_training"] == 8 and meta["validation"]["n_images"] == 8
    assert meta["n_train_images"] == 24 and meta["trainset"]["n_on_both_sides"] == 0


def test_val_sharing_patients_with_training_is_refused(blob_data, tmp_path, capsys):
    """Other images of training patients in --val: an error naming how many patients and examples; nothing trains."""
    from pneumoscan.cli import main

    val = make_blob_dataset(tmp_path / "val", n_per_class=3, seed=2, first=100)
    shutil.copy(blob_data / "NORMAL" / "IM-0002-0001.jpeg", val / "NORMAL" / "IM-0002-0007.jpeg")
    shutil.copy(blob_data / "PNEUMONIA" / "person5_bacteria_5.jpeg", val / "PNEUMONIA" / "person5_virus_77.jpeg")
    code = main(["train", "--data", str(blob_data), "--val", str(val), "--out", str(tmp_path / "run"),
                 "--set", "model.name=seed-cnn", "--set", f"data.cache_dir='{tmp_path / 'cache'}'", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert "2 patient(s) have images both in the training data" in err
    assert "IM-0002" in err and "person5" in err and "IM-0002-0007.jpeg" in err
    assert not (tmp_path / "run" / "best.safetensors").exists()


def test_val_without_both_classes_is_refused(blob_data, tmp_path):
    from pneumoscan.errors import ConfigError

    val = make_blob_dataset(tmp_path / "val", n_per_class=3, seed=2, first=100)
    shutil.rmtree(val / "PNEUMONIA")
    cfg = small_config(blob_data, tmp_path / "cache", **{"train.epochs": 1, "data.val": f"'{val}'"})
    with pytest.raises(ConfigError, match="validation set needs images of both classes"):
        train(cfg, tmp_path / "run", progress=False)
