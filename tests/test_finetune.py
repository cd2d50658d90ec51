"""Fine-tuning (``train --init-from``): starts from the parent's weights, records where it came from, refuses the
parent's training films by content, refuses a network other than the parent's, resumes, and gives a checkpoint
that predicts and exports like any other."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
import torch

from test_train import make_blob_dataset, read_metrics, small_config

from pneumoscan.checkpoint import load_checkpoint, load_state
from pneumoscan.cli import main
from pneumoscan.errors import ConfigError, DatasetError
from pneumoscan.inference.provenance import provenance_line, site_state
from pneumoscan.onboarding.trainset import hash_files
from pneumoscan.training import loop as loop_module
from pneumoscan.training import resume, train
from pneumoscan.training.finetune import PARENT_FILMS, finetune_config
from pneumoscan.utils import file_sha256


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """A tiny trained parent (seed-cnn, 64 px) with its training-film hashes, and the folder it trained on."""
    root = tmp_path_factory.mktemp("parent")
    data = make_blob_dataset(root / "data", n_per_class=16, seed=0)
    result = train(small_config(data, root / "cache"), root / "run", progress=False)
    return result.best_checkpoint, data


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site's own labelled films: other patients (numbered from 100), drawn with another seed."""
    return make_blob_dataset(tmp_path_factory.mktemp("site"), n_per_class=24, seed=7, first=100)


def ft_config(parent_ckpt, site_root, cache, *over: str):
    return finetune_config(parent_ckpt, [f"data.root='{site_root}'", f"data.cache_dir='{cache}'",
                                         "data.num_workers=1", "data.val_fraction=0.5", "train.epochs=2",
                                         "train.batch_size=8", "train.threads=1", *over])


def test_init_from_starts_from_the_parent_and_records_it(parent, site, tmp_path, monkeypatch):
    parent_ckpt, _ = parent
    cfg = ft_config(parent_ckpt, site, tmp_path / "cache")
    parent_cfg = load_checkpoint(parent_ckpt).info.config
    assert cfg.model.name == "seed-cnn" and cfg.model.image_size == 64 and not cfg.model.pretrained
    assert cfg.train.lr == pytest.approx(parent_cfg["train"]["lr"] / 10)  # the fine-tuning default
    assert cfg.to_dict()["augment"] == parent_cfg["augment"] and cfg.eval.target_sensitivity == \
        parent_cfg["eval"]["target_sensitivity"]  # the parent's recipe

    first: dict[str, torch.Tensor] = {}
    real_step = loop_module.train_step

    def spy(net, model, *args, **kwargs):
        if not first:
            first.update({k: v.detach().clone() for k, v in model.state_dict().items()})
        return real_step(net, model, *args, **kwargs)

    monkeypatch.setattr(loop_module, "train_step", spy)
    result = train(cfg, tmp_path / "run", progress=False)
    weights = load_checkpoint(parent_ckpt).state_dict
    assert set(first) == set(weights)
    for k, v in weights.items():  # the first step starts from the parent's weights
        torch.testing.assert_close(first[k], v, rtol=0, atol=0, msg=k)

    ckpt = load_checkpoint(result.best_checkpoint)
    ft = ckpt.meta["fine_tuning"]
    assert ft["parent_model_sha256"] == file_sha256(parent_ckpt)
    assert ft["parent_model_path"] == str(parent_ckpt)
    assert ft["n_images"] == 48 and ft["n_pneumonia"] == 24 and ft["n_patients"] == 48
    assert ft["n_train_images"] + ft["n_val_images"] == 48 and ft["n_val_images"] >= 20
    assert ft["validation"]["source"] == "seeded patient split" and ft["recipe"]["train"]["lr"] == cfg.train.lr
    assert site_state(ckpt.meta) == "fine-tuned"
    assert "fine-tuned at this site" in provenance_line(ckpt.meta) and ft["parent_model_sha256"][:12] in \
        provenance_line(ckpt.meta)
    assert ckpt.info.preprocessing == load_checkpoint(parent_ckpt).info.preprocessing
    assert ckpt.info.threshold_source == "checkpoint" and ckpt.meta["operating_point"]["chosen_on"] == "validation"
    assert ckpt.meta["reference"]["kind"] == "site"
    # What it learned from: the parent's films and the site's.
    parent_train = set(load_checkpoint(parent_ckpt).extra["trainset.train"].tolist())
    assert parent_train <= set(ckpt.extra["trainset.train"].tolist())
    assert len(ckpt.extra["trainset.train"]) == len(parent_train) + ft["n_train_images"]
    assert json.loads((tmp_path / "run" / "parent.json").read_text())["sha256"] == ft["parent_model_sha256"]

    # It works where a checkpoint works: the torch and ONNX predictors, and export.
    from pneumoscan.inference.export import export_onnx
    from pneumoscan.inference.predictor import Predictor

    films = sorted((site / "PNEUMONIA").iterdir())[:2] + sorted((site / "NORMAL").iterdir())[:2]
    onnx = export_onnx(result.best_checkpoint, tmp_path / "ft.onnx")
    for model in (result.best_checkpoint, onnx):
        scored = Predictor.from_checkpoint(model).score_files([str(f) for f in films])
        assert all(r.read and 0.0 <= r.probability <= 1.0 for r in scored)


def test_the_parents_training_films_are_refused_by_content(parent, site, tmp_path):
    parent_ckpt, parent_data = parent
    mixed = tmp_path / "site"
    shutil.copytree(site, mixed)
    trained_on = set(load_checkpoint(parent_ckpt).extra["trainset.train"].tolist())
    films = sorted((parent_data / "NORMAL").iterdir()) + sorted((parent_data / "PNEUMONIA").iterdir())
    copied = [f for f, h in zip(films, hash_files(films)) if h in trained_on][:3]
    for i, f in enumerate(copied):  # renamed, re-saved losslessly: caught by content, not by name
        from PIL import Image

        Image.open(f).save(mixed / f.parent.name / f"site_copy_{i}.png")
    with pytest.raises(DatasetError, match=r"3 of the 51 site films are films the parent model .* TRAINED on"):
        train(ft_config(parent_ckpt, mixed, tmp_path / "cache"), tmp_path / "run", progress=False)
    with open(tmp_path / "run" / PARENT_FILMS, newline="") as fh:
        listed = sorted(row["path"].rsplit("/", 1)[-1] for row in csv.DictReader(fh))
    assert listed == [f"site_copy_{i}.png" for i in range(3)]
    assert not (tmp_path / "run" / "best.safetensors").exists()


@pytest.mark.parametrize("override, key", [("model.name='deep-cnn'", "model.name"),
                                           ("model.image_size=96", "model.image_size"),
                                           ("model.cause_head=true", "model.cause_head")])
def test_a_network_other_than_the_parents_is_refused(parent, site, tmp_path, override, key):
    with pytest.raises(ConfigError, match=rf"{key} = .* \(the parent's is .*\)"):
        ft_config(parent[0], site, tmp_path / "cache", override)


def test_the_cli_fine_tunes_and_refuses_mismatches(parent, site, tmp_path, capsys):
    base = ["train", "--init-from", str(parent[0]), "--data", str(site), "--out", str(tmp_path / "run"),
            "--no-progress", "--set", f"data.cache_dir='{tmp_path / 'cache'}'", "--set", "train.epochs=1",
            "--set", "data.val_fraction=0.5", "--set", "train.threads=1"]
    assert main(base + ["--set", "model.image_size=32"]) == 1
    err = capsys.readouterr().err
    assert "model.image_size = 32 (the parent's is 64)" in err and "Traceback" not in err
    assert main(base + ["--config", str(tmp_path / "x.toml")]) == 2
    assert "--init-from takes the parent's recipe" in capsys.readouterr().err
    assert main(base) == 0
    out = capsys.readouterr().out
    assert "fine-tuned" in out and "not a diagnosis" in out
    assert load_checkpoint(tmp_path / "run" / "best.safetensors").meta["site_state"] == "fine-tuned"


class _Stop(Exception):
    pass


def test_resume_matches_an_uninterrupted_fine_tuning(parent, site, tmp_path):
    cfg = ft_config(parent[0], site, tmp_path / "cache", "train.epochs=3", "train.patience=10")
    train(cfg, tmp_path / "ref", progress=False)

    def stop(event, info):
        if event == "batch_end" and info["epoch"] == 2 and info["step"] == 1:
            raise _Stop

    with pytest.raises(_Stop):
        train(cfg, tmp_path / "run", callbacks=[stop], progress=False)
    assert load_state(tmp_path / "run" / "state.safetensors")["epoch"] == 1
    resumed = resume(tmp_path / "run", progress=False)
    assert resumed.epochs_run == 3 and resumed.fine_tuned_from == os.path.abspath(parent[0])
    assert read_metrics(tmp_path / "run") == read_metrics(tmp_path / "ref")
    a = load_checkpoint(tmp_path / "ref" / "best.safetensors")
    b = load_checkpoint(tmp_path / "run" / "best.safetensors")
    for k in a.state_dict:
        torch.testing.assert_close(a.state_dict[k], b.state_dict[k], rtol=0, atol=1e-6, msg=k)
    assert b.meta["fine_tuning"]["parent_model_sha256"] == a.meta["fine_tuning"]["parent_model_sha256"]


def test_resume_refuses_a_parent_that_changed(parent, site, tmp_path):
    moved = tmp_path / "parent.safetensors"
    shutil.copy(parent[0], moved)
    cfg = ft_config(moved, site, tmp_path / "cache", "train.epochs=2")

    def stop(event, info):
        if event == "batch_end" and info["epoch"] == 2:
            raise _Stop

    with pytest.raises(_Stop):
        train(cfg, tmp_path / "run", callbacks=[stop], progress=False)
    ckpt = load_checkpoint(moved)
    state = {k: v + 1 if v.is_floating_point() else v for k, v in ckpt.state_dict.items()}
    from pneumoscan.checkpoint import save_checkpoint

    save_checkpoint(moved, state, ckpt.meta, extra=ckpt.extra)
    with pytest.raises(ConfigError, match="changed since the run"):
        resume(tmp_path / "run", progress=False)
    assert np.isfinite(float(read_metrics(tmp_path / "run")[0]["val_auc"]))
