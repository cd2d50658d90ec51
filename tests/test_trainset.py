"""trainset: content hashes of a model's training and validation films, and which images a model has seen."""

import shutil

import numpy as np
import pytest
import torch
from imagefactory import make_jpeg, make_png, synthetic_xray
from modelfactory import make_checkpoint

from pneumoscan.checkpoint import load_checkpoint, save_checkpoint
from pneumoscan.io import read_image
from pneumoscan.onboarding.trainset import attach_trainset, hash_files, overlap, pixel_hash, trainset_tensors


def test_pixel_hash_is_an_int64_of_shape_and_pixels():
    a = synthetic_xray(96, 80, seed=1)
    h = pixel_hash(a)
    assert isinstance(h, int) and -(2**63) <= h < 2**63
    assert pixel_hash(a.copy()) == h
    assert pixel_hash(a.reshape(80, 96)) != h  # same bytes, other shape
    b = a.copy()
    b[0, 0] ^= 1
    assert pixel_hash(b) != h  # one gray level


def test_hash_survives_renaming_and_lossless_reencoding_but_not_recompression(tmp_path):
    src = make_jpeg(tmp_path / "film.jpeg", synthetic_xray(128, 112, seed=2), quality=90)
    renamed = tmp_path / "other" / "renamed_copy.jpg"
    renamed.parent.mkdir()
    shutil.copy(src, renamed)
    png = make_png(tmp_path / "film.png", read_image(src))  # JPEG -> PNG: the decoded pixels, without loss
    recompressed = make_jpeg(tmp_path / "film-q70.jpeg", read_image(src), quality=70)
    h_src, h_renamed, h_png, h_recompressed = hash_files([src, renamed, png, recompressed])
    assert h_src == h_renamed == h_png
    assert h_recompressed != h_src  # a lossy re-encoding changes the pixels: not caught (and documented so)


def test_hash_files_keeps_order_and_gives_none_for_undecodable(tmp_path):
    a = make_png(tmp_path / "a.png", synthetic_xray(64, 64, seed=3))
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    b = make_png(tmp_path / "b.png", synthetic_xray(64, 64, seed=4))
    serial = hash_files([a, bad, b], workers=1)
    assert serial == hash_files([a, bad, b], workers=3)
    assert serial[1] is None and None not in (serial[0], serial[2]) and serial[0] != serial[2]


def test_overlap_says_which_images_were_trained_on(tmp_path):
    films = [synthetic_xray(64, 64, seed=s) for s in range(6)]
    train, val = [pixel_hash(f) for f in films[:3]], [pixel_hash(films[3])]
    tensors = trainset_tensors(train + [None], val)
    assert tensors["trainset.train"].dtype == torch.int64 and tensors["trainset.train"].numel() == 3
    path = make_checkpoint(tmp_path / "m.safetensors")
    ckpt = load_checkpoint(path)
    assert not overlap(ckpt, [pixel_hash(films[0])]).known  # a model without hashes: nothing can be said
    save_checkpoint(path, ckpt.state_dict, ckpt.meta, extra=tensors)
    ckpt = load_checkpoint(path)
    query = [pixel_hash(films[4]), pixel_hash(films[1]), None, pixel_hash(films[3]), pixel_hash(films[0])]
    ov = overlap(ckpt, query)
    assert ov.known and ov.train == [1, 4] and ov.val == [3] and ov.n_images == 5
    d = ov.to_dict(["a", "b", "c", "d", "e"])
    assert d == {"known": True, "n_images": 5, "n_train": 2, "n_val": 1, "train_examples": ["b", "e"],
                 "val_examples": ["d"]}


def test_attach_trainset_adds_the_split_hashes_and_keeps_the_weights(tmp_path):
    data = tmp_path / "data"
    for label, seeds in (("NORMAL", range(10)), ("PNEUMONIA", range(10, 20))):
        (data / label).mkdir(parents=True)
        for s in seeds:
            make_png(data / label / f"IM-{s:04d}-0001.png" if label == "NORMAL" else data / label / f"person{s}_bacteria_1.png",
                     synthetic_xray(64, 64, seed=s))
    src = make_checkpoint(tmp_path / "m.safetensors")
    counts = attach_trainset(src, data, tmp_path / "with.safetensors")
    assert counts["train"] + counts["val"] == 20 and counts["val"] >= 2
    before, after = load_checkpoint(src), load_checkpoint(tmp_path / "with.safetensors")
    assert all(torch.equal(v, after.state_dict[k]) for k, v in before.state_dict.items())
    hashes = hash_files(sorted(data.rglob("*.png")))
    ov = overlap(after, hashes)
    assert len(ov.train) == counts["train"] and len(ov.val) == counts["val"]
    assert not set(ov.train) & set(ov.val)


@pytest.mark.shared_data
def test_shipped_model_knows_its_training_films(shared_data_root):
    from pneumoscan.inference.predictor import default_model_path

    ckpt = load_checkpoint(default_model_path())
    assert ckpt.extra["trainset.train"].numel() == 4617 and ckpt.extra["trainset.val"].numel() == 573
    files = sorted((shared_data_root / "train" / "NORMAL").glob("*.jpeg"))[:20]
    ov = overlap(ckpt, hash_files(files))
    # Every film of the training folder is on one side of the shipped model's split.
    assert ov.known and len(ov.train) + len(ov.val) == 20 and len(ov.train) >= 10
    assert np.all(np.diff(ov.train) > 0)
