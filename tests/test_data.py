import json
import logging
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumoscan.data import cache as data_mod
from pneumoscan.preprocessing import pipeline_fingerprint
from pneumoscan.data import (
    CLASS_NAMES,
    DatasetError,
    Record,
    build_cache,
    index_dataset,
    parse_name,
    split_by_patient,
    split_index,
    summarize,
    write_manifest,
)
from pneumoscan.io import read_image
from pneumoscan.preprocessing import resize_square

# --------------------------------------------------------------------------- helpers


def _jpeg(path: Path, seed: int = 0, shape=(72, 88)) -> Path:
    """A small noisy grayscale JPEG (sides >= 64, io's minimum)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path, format="JPEG")
    return path


NORMAL_FILES = ["IM-0001-0001.jpeg", "IM-0001-0002.JPG", "IM-0002-0001.jpeg", "NORMAL2-IM-0001-0001.jpeg"]
PNEUMONIA_FILES = [
    "person1_bacteria_1.jpeg",
    "person1_virus_2.jpeg",
    "person2_virus_3.jpeg",
    "person3_bacteria_4.jpeg",
    "person3_bacteria_5.jpeg",
    "person3_bacteria_6.jpeg",
]


@pytest.fixture
def dataset(tmp_path):
    """<tmp>/ds/train/{normal,Pneumonia}/ with mixed-case class folders, plus a test/ split."""
    root = tmp_path / "ds"
    for i, name in enumerate(NORMAL_FILES):
        _jpeg(root / "train" / "normal" / name, seed=i)
    for i, name in enumerate(PNEUMONIA_FILES):
        _jpeg(root / "train" / "Pneumonia" / name, seed=100 + i)
    _jpeg(root / "test" / "NORMAL" / "IM-0009-0001.jpeg", seed=7)
    _jpeg(root / "test" / "PNEUMONIA" / "person9_virus_9.jpeg", seed=8)
    return root


# --------------------------------------------------------------------------- parse_name


@pytest.mark.parametrize(
    "name, expected",
    [
        ("person1000_bacteria_2931.jpeg", ("person1000", "bacteria")),
        ("person1000_virus_1681.jpeg", ("person1000", "virus")),
        ("person447_virus_921_1.jpeg", ("person447", "virus")),
        ("PERSON12_Bacteria_3.JPEG", ("person12", "bacteria")),
        ("IM-0115-0001.jpeg", ("IM-0115", None)),
        ("IM-0429-0001-0002.jpg", ("IM-0429", None)),
        ("im-0115-0001.PNG", ("IM-0115", None)),
        ("NORMAL2-IM-0851-0001-0002.jpeg", ("NORMAL2-IM-0851", None)),
        ("NORMAL2-IM-0851-0001.jpeg", ("NORMAL2-IM-0851", None)),
        ("some/dir/IM-0115-0001.dcm", ("IM-0115", None)),
        ("scan_42.png", (None, None)),
        ("child_virus.png", (None, "virus")),
        ("IM-0115.jpeg", (None, None)),
        ("virusfree.jpeg", (None, None)),
    ],
)
def test_parse_name(name, expected):
    assert parse_name(name) == expected


def test_normal2_is_its_own_namespace():
    assert parse_name("NORMAL2-IM-0851-0001.jpeg")[0] != parse_name("IM-0851-0001.jpeg")[0]


# --------------------------------------------------------------------------- folder layout


def test_folder_layout_with_split_and_mixed_case(dataset):
    (dataset / "train" / "normal" / ".DS_Store").write_bytes(b"junk")
    (dataset / "train" / "normal" / "nested").mkdir()
    _jpeg(dataset / "train" / "normal" / "nested" / "IM-0100-0001.jpeg")
    _jpeg(dataset / "train" / "normal" / "scan_42.jpeg", seed=3)
    index = index_dataset(dataset, split="train")
    assert len(index) == 11 and index.skipped == []
    assert index.labels.tolist() == [0] * 5 + [1] * 6
    names = [Path(r.path).name for r in index.records]
    assert names[:5] == sorted(NORMAL_FILES + ["scan_42.jpeg"])
    assert names[5:] == sorted(PNEUMONIA_FILES)
    assert all(os.path.isabs(r.path) for r in index.records)
    by_name = {Path(r.path).name: r for r in index.records}
    assert by_name["scan_42.jpeg"].patient_id == "file:normal/scan_42.jpeg"
    assert by_name["IM-0001-0002.JPG"].patient_id == "IM-0001"
    p3 = by_name["person3_bacteria_5.jpeg"]
    assert p3 == Record(p3.path, 1, "person3", "bacteria")
    assert len(index.infos) == len(index) and index.infos[0].width == 88 and index.infos[0].height == 72
    # the order is deterministic
    assert index_dataset(dataset, split="train", check=False).records == index.records


def test_root_with_class_folders_directly(dataset):
    index = index_dataset(dataset / "test", check=False)
    assert index.labels.tolist() == [0, 1]


def test_root_with_only_split_folders_asks_for_split(dataset):
    with pytest.raises(DatasetError, match=r"test, train.*--split"):
        index_dataset(dataset)


@pytest.mark.parametrize("what", ["missing", "no_split", "no_classes", "empty"])
def test_dataset_errors(tmp_path, what):
    if what == "missing":
        src, kwargs, msg = tmp_path / "nowhere", {}, "nowhere"
    elif what == "no_split":
        _jpeg(tmp_path / "NORMAL" / "IM-0001-0001.jpeg")
        src, kwargs, msg = tmp_path, {"split": "val"}, "no split folder 'val'"
    elif what == "no_classes":
        (tmp_path / "cats").mkdir()
        src, kwargs, msg = tmp_path, {}, "no NORMAL/PNEUMONIA folders.*cats"
    else:
        (tmp_path / "NORMAL").mkdir()
        (tmp_path / "PNEUMONIA").mkdir()
        src, kwargs, msg = tmp_path, {}, "no usable images"
    with pytest.raises(DatasetError, match=msg):
        index_dataset(src, **kwargs)


def test_corrupt_and_empty_files_are_skipped_and_counted(dataset, caplog):
    normal = dataset / "train" / "normal"
    (normal / "IM-0050-0001.jpeg").write_bytes(b"")
    (normal / "IM-0051-0001.jpeg").write_bytes(b"this is not an image at all")
    good = (normal / "IM-0001-0001.jpeg").read_bytes()
    (normal / "IM-0052-0001.jpeg").write_bytes(good[:-len(good) // 2])  # truncated JPEG
    with caplog.at_level(logging.WARNING, logger="pneumoscan.data"):
        index = index_dataset(dataset, split="train")
    skipped = {Path(p).name for p, _ in index.skipped}
    assert {"IM-0050-0001.jpeg", "IM-0051-0001.jpeg"} <= skipped
    assert all(reason for _, reason in index.skipped)
    assert len(index) + len(index.skipped) == 13
    assert {Path(r.path).name for r in index.records} >= set(NORMAL_FILES + PNEUMONIA_FILES)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("skipping" in m for m in lines) == len(index.skipped)
    assert any(f"{len(index.skipped)} file(s) skipped" in m for m in lines)
    # check=False does not open the files
    assert len(index_dataset(dataset, split="train", check=False)) == 13


# --------------------------------------------------------------------------- CSV manifest


def test_csv_manifest(tmp_path):
    imgs = tmp_path / "imgs"
    a = _jpeg(imgs / "IM-0001-0001.jpeg", 1)
    b = _jpeg(imgs / "person5_virus_1.jpeg", 2)
    c = _jpeg(imgs / "scan.jpeg", 3)
    d = _jpeg(tmp_path / "elsewhere" / "x.jpeg", 4)
    (tmp_path / "m.csv").write_text(
        "Path,Label,patient_id,split\n"
        "imgs/IM-0001-0001.jpeg,normal,,train\n"
        "imgs/person5_virus_1.jpeg,1,,train\n"
        "imgs/scan.jpeg,0,P77,val\n"
        f"{d},PNEUMONIA,,train\n"
        "imgs/IM-0001-0001.jpeg,maybe,,train\n"
        ",1,,train\n"
        "imgs/missing.jpeg,1,,train\n"
        "imgs/person5_virus_1.jpeg,1,,train\n"
    )
    index = index_dataset(tmp_path / "m.csv", check=False)
    assert [r.path for r in index.records] == [str(a), str(b), str(c), str(d)]
    assert index.labels.tolist() == [0, 1, 0, 1]
    assert [r.patient_id for r in index.records] == ["IM-0001", "person5", "P77", f"file:{d}"]
    assert index.records[1].cause == "virus"
    reasons = [reason for _, reason in index.skipped]
    assert len(reasons) == 4
    assert "bad label" in reasons[0] and "missing path" in reasons[1]
    assert "file not found" in reasons[2] and "duplicate" in reasons[3]
    val = index_dataset(tmp_path / "m.csv", split="val")
    assert [r.path for r in val.records] == [str(c)] and val.skipped == []


def test_csv_manifest_without_required_columns(tmp_path):
    (tmp_path / "m.csv").write_text("file,class\na.jpeg,1\n")
    with pytest.raises(DatasetError, match="path, label|label, path|lacks column"):
        index_dataset(tmp_path / "m.csv")
    (tmp_path / "n.csv").write_text("path,label\na.jpeg,1\n")
    with pytest.raises(DatasetError, match="no 'split' column"):
        index_dataset(tmp_path / "n.csv", split="train")


def test_manifest_round_trip(dataset, tmp_path):
    index = index_dataset(dataset, split="train", check=False)
    _jpeg(tmp_path / "outside" / "odd name.jpeg")  # outside the manifest folder: written absolute
    odd = Record(str(tmp_path / "outside" / "odd name.jpeg"), 1, "file:odd", None)
    records = list(index.records) + [odd]
    splits = ["train", "val"] * (len(records) // 2) + ["train"] * (len(records) % 2)
    out = dataset / "split.csv"
    write_manifest(out, records, splits)
    assert sorted(p.name for p in dataset.iterdir()) == ["split.csv", "test", "train"]  # no temp file left
    back = index_dataset(out, check=False)
    assert back.records == records
    train = index_dataset(out, split="train", check=False)
    assert train.records == [r for r, s in zip(records, splits) if s == "train"]
    assert out.read_text().splitlines()[0] == "path,label,patient_id,cause,split"
    text = out.read_text()
    assert "\ntrain/normal/IM-0001-0001.jpeg,NORMAL,IM-0001,,train\n" in text  # relative under the folder
    assert f"\n{odd.path},PNEUMONIA,file:odd,,train\n" in text  # absolute elsewhere
    with pytest.raises(ValueError):
        write_manifest(out, records, ["train"])


def test_manifest_cells_never_start_like_a_formula_and_still_round_trip(tmp_path):
    files = ["=1+1.jpeg", "-x.jpeg", "@y.jpeg", "+z.jpeg", "'=q.jpeg", "plain.jpeg"]
    pids = ["-12", "=cmd|' /C calc'!A0", "@p", "'=a", "'b", "P7"]
    records = [Record(str(_jpeg(tmp_path / name, i)), i % 2, pid, None)
               for i, (name, pid) in enumerate(zip(files, pids))]
    out = tmp_path / "split.csv"
    write_manifest(out, records, "train")
    lines = out.read_text().splitlines()[1:]
    assert [line.split(",")[0] for line in lines] == ["./=1+1.jpeg", "./-x.jpeg", "./@y.jpeg", "./+z.jpeg",
                                                      "./'=q.jpeg", "plain.jpeg"]
    for line in lines:
        assert not any(cell.startswith(("=", "+", "-", "@", "\t", "\r")) for cell in line.split(",")), line
    assert index_dataset(out, check=False).records == records  # read back exactly


# --------------------------------------------------------------------------- split


def _synthetic_patients(seed=0, n_normal=60, n_pneumonia=170):
    """Image-level (patient_ids, labels) with 1..4 images per patient."""
    rng = np.random.default_rng(seed)
    pids, labels = [], []
    for label, n in ((0, n_normal), (1, n_pneumonia)):
        for p in range(n):
            for _ in range(int(rng.integers(1, 5))):
                pids.append(f"{'IM' if label == 0 else 'person'}-{p}")
                labels.append(label)
    return pids, labels


def test_split_is_deterministic_and_seed_dependent():
    pids, labels = _synthetic_patients()
    state = np.random.get_state()[1].copy()
    a = split_by_patient(pids, labels, 0.1, seed=3)
    assert np.array_equal(np.random.get_state()[1], state)  # the global RNG is not touched
    assert np.array_equal(a, split_by_patient(pids, labels, 0.1, seed=3))
    assert not np.array_equal(a, split_by_patient(pids, labels, 0.1, seed=4))
    assert a.dtype == bool and a.shape == (len(pids),)


@pytest.mark.parametrize("seed", range(8))
def test_split_keeps_patients_on_one_side_and_is_stratified(seed):
    pids, labels = _synthetic_patients(seed)
    mask = split_by_patient(pids, labels, 0.1, seed=seed)
    val = {p for p, m in zip(pids, mask) if m}
    train = {p for p, m in zip(pids, mask) if not m}
    assert not val & train
    for label, n in ((0, 60), (1, 170)):
        n_val = len({p for p, lab, m in zip(pids, labels, mask) if m and lab == label})
        assert n_val == round(0.1 * n)


def test_split_is_independent_of_image_order():
    pids, labels = _synthetic_patients(1)
    mask = split_by_patient(pids, labels, 0.2, seed=9)
    val = {p for p, m in zip(pids, mask) if m}
    order = list(range(len(pids)))
    random.Random(5).shuffle(order)
    shuffled = split_by_patient([pids[i] for i in order], [labels[i] for i in order], 0.2, seed=9)
    assert {pids[i] for i, m in zip(order, shuffled) if m} == val


def test_split_edge_cases():
    # a patient labelled both ways counts as PNEUMONIA; small classes still get one validation patient
    mask = split_by_patient(["a", "a", "b", "c", "d"], [0, 1, 0, 1, 1], 0.1, seed=0)
    assert mask[0] == mask[1]
    assert split_by_patient(["a", "b"], [0, 0], 0.0).sum() == 0
    assert split_by_patient(["a", "b"], [0, 0], 0.1).sum() == 1
    assert split_by_patient(["a"], [0], 0.5).sum() == 0  # a lone patient stays in training
    with pytest.raises(ValueError):
        split_by_patient(["a"], [0, 1])
    with pytest.raises(ValueError):
        split_by_patient(["a"], [0], 1.0)


def test_split_index(dataset):
    index = index_dataset(dataset, split="train", check=True)
    train, val = split_index(index, 0.4, seed=1)
    assert len(train) + len(val) == len(index)
    assert not set(train.patients) & set(val.patients)
    assert len(train.infos) == len(train) and len(val.infos) == len(val)


def test_split_with_validation(dataset, tmp_path):
    """A given validation set: its images validate, the rest trains; an image on both sides validates only."""
    from pneumoscan.data.dataset import split_with_validation

    index = index_dataset(dataset, split="train")
    given = tmp_path / "val.csv"  # two of the training folder's own images (all of patients IM-0002 and person2)
    given.write_text("path,label\n"
                     f"{dataset / 'train' / 'normal' / 'IM-0002-0001.jpeg'},NORMAL\n"
                     f"{dataset / 'train' / 'Pneumonia' / 'person2_virus_3.jpeg'},PNEUMONIA\n"
                     f"{dataset / 'test' / 'NORMAL' / 'IM-0009-0001.jpeg'},NORMAL\n")
    val_index = index_dataset(given)
    train, val, moved = split_with_validation(index, val_index)
    assert val is val_index and len(val) == 3
    assert sorted(Path(p).name for p in moved) == ["IM-0002-0001.jpeg", "person2_virus_3.jpeg"]
    assert len(train) == len(index) - 2
    assert not {os.path.realpath(r.path) for r in train.records} & {os.path.realpath(r.path) for r in val.records}
    assert not set(train.patients) & set(val.patients)
    # the same file reached through a link is the same image
    link = tmp_path / "linked"
    (link / "NORMAL").mkdir(parents=True)
    (link / "PNEUMONIA").mkdir()
    os.symlink(dataset / "train" / "normal" / "IM-0002-0001.jpeg", link / "NORMAL" / "IM-0002-0001.jpeg")
    os.symlink(dataset / "train" / "Pneumonia" / "person2_virus_3.jpeg", link / "PNEUMONIA" / "person2_virus_3.jpeg")
    assert len(split_with_validation(index, index_dataset(link))[2]) == 2


def test_split_with_validation_refuses_shared_patients_and_relabelled_images(dataset, tmp_path):
    from pneumoscan.data.dataset import split_with_validation

    index = index_dataset(dataset, split="train")
    val_root = tmp_path / "val"
    _jpeg(val_root / "NORMAL" / "IM-0001-0009.jpeg", seed=50)  # another film of training patient IM-0001
    _jpeg(val_root / "PNEUMONIA" / "person3_virus_99.jpeg", seed=51)  # and of person3
    _jpeg(val_root / "PNEUMONIA" / "person77_virus_1.jpeg", seed=52)
    with pytest.raises(DatasetError, match=r"2 patient\(s\) have images both in the training data") as err:
        split_with_validation(index, index_dataset(val_root))
    assert "IM-0001" in str(err.value) and "person3" in str(err.value) and "IM-0001-0009.jpeg" in str(err.value)
    # files that name no patient are their own patients: the same made-up id on both sides is no overlap
    a, b = tmp_path / "a", tmp_path / "b"
    for root, seed in ((a, 60), (b, 70)):
        _jpeg(root / "NORMAL" / "scan_1.jpeg", seed=seed)
        _jpeg(root / "PNEUMONIA" / "scan_2.jpeg", seed=seed + 1)
    ia, ib = index_dataset(a), index_dataset(b)
    assert ia.records[0].patient_id == ib.records[0].patient_id == "file:NORMAL/scan_1.jpeg"
    train, val, moved = split_with_validation(ia, ib)
    assert len(train) == 2 and len(val) == 2 and moved == []
    # one file, two labels
    relabel = tmp_path / "relabel.csv"
    relabel.write_text(f"path,label\n{dataset / 'train' / 'normal' / 'IM-0002-0001.jpeg'},PNEUMONIA\n")
    with pytest.raises(DatasetError, match="labelled differently"):
        split_with_validation(index, index_dataset(relabel))


# --------------------------------------------------------------------------- summary


def test_summary_numbers(dataset):
    (dataset / "train" / "normal" / "IM-0060-0001.jpeg").write_bytes(b"")
    index = index_dataset(dataset, split="train")
    s = summarize(index)
    assert json.loads(json.dumps(s)) == s  # JSON-safe
    assert s["n_images"] == 10 and s["n_patients"] == 6
    assert s["images_per_class"] == {"NORMAL": 4, "PNEUMONIA": 6}
    assert s["images_per_cause"]["PNEUMONIA"] == {"bacteria": 4, "virus": 2, "unknown": 0}
    assert s["images_per_cause"]["NORMAL"] == {"bacteria": 0, "virus": 0, "unknown": 4}
    assert s["patients_per_class"] == {"NORMAL": 3, "PNEUMONIA": 3}
    assert s["imbalance_ratio"] == pytest.approx(1.5)
    assert s["pneumonia_to_normal"] == pytest.approx(1.5)
    # IM-0001: 2, IM-0002: 1, NORMAL2-IM-0001: 1, person1: 2, person2: 1, person3: 3
    assert s["images_per_patient"] == {"mean": pytest.approx(10 / 6), "min": 1, "median": 1.5, "max": 3,
                                       "histogram": {"1": 3, "2": 2, "3": 1}}
    assert s["image_size"] == {"width": {"min": 88, "median": 88.0, "max": 88},
                               "height": {"min": 72, "median": 72.0, "max": 72}}
    assert s["modes"] == {"L": 10} and s["formats"] == {"JPEG": 10}
    assert s["n_skipped"] == 1 and s["skipped"][0]["path"].endswith("IM-0060-0001.jpeg")
    unchecked = summarize(index_dataset(dataset, split="train", check=False))
    assert unchecked["image_size"] is None and unchecked["modes"] == {}


# --------------------------------------------------------------------------- cache


@pytest.fixture
def decode_counter(monkeypatch):
    calls = []
    real = data_mod.read_film

    def counting(path, *args, **kwargs):
        calls.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(data_mod, "read_film", counting)
    return calls


def _expected(path, size):
    return resize_square(read_image(path), size)


def test_cache_build_and_reuse(dataset, tmp_path, decode_counter):
    records = index_dataset(dataset, split="train", check=False).records
    cache = build_cache(records, 32, tmp_path / "cache", progress=False)
    assert len(decode_counter) == len(records) and len(cache) == len(records)
    assert cache.images.shape == (len(records), 32, 32) and cache.images.dtype == np.uint8
    assert not cache.images.flags.writeable
    assert cache.records == records and cache.failures == [] and cache.size == 32
    assert cache.labels.tolist() == [r.label for r in records]
    for i in (0, 4, len(records) - 1):
        assert np.array_equal(cache.images[i], _expected(records[i].path, 32))
    files = sorted(p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock"))
    assert files == [f"{cache.key}.json", f"{cache.key}.npy"]
    meta = json.loads((tmp_path / "cache" / f"{cache.key}.json").read_text())
    assert meta["size"] == 32 and meta["pipeline"] == pipeline_fingerprint()

    decode_counter.clear()
    again = build_cache(records, 32, tmp_path / "cache", progress=False, num_workers=1)
    assert decode_counter == [] and again.key == cache.key
    assert np.array_equal(np.asarray(again.images), np.asarray(cache.images))


def test_cache_files_are_owner_only(dataset, tmp_path):
    records = index_dataset(dataset, split="train", check=False).records
    old_umask = os.umask(0)
    try:
        cache = build_cache(records, 32, tmp_path / "made" / "cache", progress=False)
        (tmp_path / "theirs").mkdir(mode=0o755)
        build_cache(records, 32, tmp_path / "theirs", progress=False)
    finally:
        os.umask(old_umask)
    folder = tmp_path / "made" / "cache"
    assert oct(folder.stat().st_mode & 0o777) == oct(0o700)  # we made it: owner only
    assert oct((tmp_path / "theirs").stat().st_mode & 0o777) == oct(0o755)  # the user's own folder is left as is
    for f in (f"{cache.key}.npy", f"{cache.key}.json", ".build.lock"):
        for where in (folder, tmp_path / "theirs"):
            assert oct((where / f).stat().st_mode & 0o777) == oct(0o600), where / f


def test_cache_rebuilds_on_touched_file_and_on_size(dataset, tmp_path, decode_counter):
    records = index_dataset(dataset, split="train", check=False).records
    first = build_cache(records, 32, tmp_path / "c", progress=False)
    st = os.stat(records[2].path)
    os.utime(records[2].path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    decode_counter.clear()
    touched = build_cache(records, 32, tmp_path / "c", progress=False)
    assert touched.key != first.key and len(decode_counter) == len(records)
    decode_counter.clear()
    resized = build_cache(records, 48, tmp_path / "c", progress=False)
    assert resized.key != touched.key and len(decode_counter) == len(records)
    assert resized.images.shape == (len(records), 48, 48)
    decode_counter.clear()
    fewer = build_cache(records[:-1], 48, tmp_path / "c", progress=False)
    assert fewer.key != resized.key and len(decode_counter) == len(records) - 1


def test_cache_excludes_undecodable_files(dataset, tmp_path, caplog):
    normal = dataset / "train" / "normal"
    (normal / "IM-0050-0001.jpeg").write_bytes(b"")
    (normal / "IM-0051-0001.jpeg").write_bytes(b"not an image")
    records = index_dataset(dataset, split="train", check=False).records
    bad = {str(normal / "IM-0050-0001.jpeg"), str(normal / "IM-0051-0001.jpeg")}
    with caplog.at_level(logging.WARNING, logger="pneumoscan.data"):
        cache = build_cache(records, 24, tmp_path / "c", progress=False)
    assert {p for p, _ in cache.failures} == bad and all(r for _, r in cache.failures)
    assert sum("cannot cache" in r.getMessage() for r in caplog.records) == 2
    good = [r for r in records if r.path not in bad]
    assert cache.records == good and len(cache) == len(good) == cache.images.shape[0]
    for i, rec in enumerate(good):
        assert np.array_equal(cache.images[i], _expected(rec.path, 24))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pneumoscan.data"):
        reused = build_cache(records, 24, tmp_path / "c", progress=False)
    assert reused.records == good and reused.failures == cache.failures
    # a reused cache still names each file it lacks, and why ("the log above" of a reuse is empty otherwise)
    named = [r.getMessage() for r in caplog.records if "cannot cache" in r.getMessage()]
    assert len(named) == 2 and all(any(b in m for m in named) for b in bad)
    assert any("empty" in m for m in named) and any("not an image" in m for m in named)


def test_many_undecodable_files_are_named_up_to_a_limit(tmp_path, caplog):
    from pneumoscan.data import MAX_FAILURES_LOGGED

    root = tmp_path / "ds" / "NORMAL"
    root.mkdir(parents=True)
    (tmp_path / "ds" / "PNEUMONIA").mkdir()
    make_png = lambda p, seed: Image.fromarray(np.full((80, 80), seed, np.uint8)).save(p)  # noqa: E731
    make_png(root / "IM-0001-0001.png", 10)
    make_png(tmp_path / "ds" / "PNEUMONIA" / "person1_virus_1.png", 20)
    for i in range(MAX_FAILURES_LOGGED + 5):
        (root / f"IM-{i + 100:04d}-0001.png").write_bytes(b"")
    records = index_dataset(tmp_path / "ds", check=False).records
    build_cache(records, 16, tmp_path / "c", progress=False)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pneumoscan.data"):
        cache = build_cache(records, 16, tmp_path / "c", progress=False)  # reused
    msgs = [r.getMessage() for r in caplog.records]
    assert len(cache) == 2 and sum("cannot cache" in m for m in msgs) == MAX_FAILURES_LOGGED
    assert any("... and 5 more" in m and f"{cache.key}.json" in m for m in msgs)
    assert any(f"{MAX_FAILURES_LOGGED + 5} of {MAX_FAILURES_LOGGED + 7} image(s)" in m for m in msgs)


def test_cache_crash_mid_build_leaves_nothing_valid(dataset, tmp_path, monkeypatch):
    records = index_dataset(dataset, split="train", check=False).records
    real = data_mod.read_film
    calls = []

    def flaky(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 5:
            raise RuntimeError("simulated crash")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(data_mod, "read_film", flaky)
    with pytest.raises(RuntimeError, match="simulated crash"):
        build_cache(records, 32, tmp_path / "c", progress=False, num_workers=2)
    left = [p.name for p in (tmp_path / "c").iterdir() if not p.name.endswith(".lock")]
    assert not any(n.endswith((".json", ".npy")) for n in left), left
    monkeypatch.setattr(data_mod, "read_film", real)
    (tmp_path / "c" / "0123abcd.npy.partial").write_bytes(b"left by a killed build of another key")
    cache = build_cache(records, 32, tmp_path / "c", progress=False)
    assert len(cache) == len(records)
    assert np.array_equal(cache.images[4], _expected(records[4].path, 32))
    assert not list((tmp_path / "c").glob("*.partial"))  # stale partial files are cleaned up
    dead = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True).stdout)
    stale = tmp_path / "c" / f".{cache.key}.json.{dead}.0badc0de.tmp"  # a sidecar write killed half-way
    stale.write_text("{")
    os.utime(stale, (0, 0))
    assert build_cache(records, 32, tmp_path / "c", progress=False).key == cache.key  # reused, and swept
    assert not stale.exists()


def test_concurrent_builders_decode_once(dataset, tmp_path, decode_counter):
    records = index_dataset(dataset, split="train", check=False).records
    with ThreadPoolExecutor(max_workers=3) as pool:
        caches = list(pool.map(lambda _: build_cache(records, 32, tmp_path / "c", progress=False), range(3)))
    assert len(decode_counter) == len(records)  # the folder lock makes the others reuse the first build
    assert len({c.key for c in caches}) == 1
    assert all(np.array_equal(np.asarray(c.images), np.asarray(caches[0].images)) for c in caches)


def test_cache_survives_sigkill(dataset, tmp_path):
    records = index_dataset(dataset, split="train", check=False).records
    cache_dir = tmp_path / "c"
    script = textwrap.dedent(f"""
        import time
        from pneumoscan import data
        from pneumoscan.data import cache
        real = cache.read_film
        def slow(path, *args, **kw):
            time.sleep(0.2)
            return real(path, *args, **kw)
        cache.read_film = slow
        records = data.index_dataset({str(dataset)!r}, split="train", check=False).records
        data.build_cache(records, 32, {str(cache_dir)!r}, progress=False, num_workers=1)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 20
        while not list(cache_dir.glob("*.partial")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        assert list(cache_dir.glob("*.partial")), f"the build never started (exit code {proc.poll()})"
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=20)
    assert not list(cache_dir.glob("*.json"))
    cache = build_cache(records, 32, cache_dir, progress=False)
    assert len(cache) == len(records) and not list(cache_dir.glob("*.partial"))
    assert np.array_equal(cache.images[-1], _expected(records[-1].path, 32))


def test_cache_rejects_corrupt_array(dataset, tmp_path, decode_counter):
    records = index_dataset(dataset, split="train", check=False).records
    cache = build_cache(records, 32, tmp_path / "c", progress=False)
    npy = tmp_path / "c" / f"{cache.key}.npy"
    del cache
    np.save(npy, np.zeros((2, 32, 32), np.uint8))  # wrong shape, right key
    decode_counter.clear()
    rebuilt = build_cache(records, 32, tmp_path / "c", progress=False)
    assert len(decode_counter) == len(records) and rebuilt.images.shape[0] == len(records)
    with pytest.raises(DatasetError):
        build_cache([], 32, tmp_path / "c")


# --------------------------------------------------------------------------- shared data


@pytest.mark.shared_data
def test_shared_training_set(shared_data_root):
    index = index_dataset(shared_data_root, split="train", check=False)
    counts = np.bincount(index.labels, minlength=2)
    assert dict(zip(CLASS_NAMES, counts.tolist())) == {"NORMAL": 1341, "PNEUMONIA": 3875}
    assert not [r for r in index.records if r.patient_id.startswith("file:")]
    train, val = split_index(index)
    assert not set(train.patients) & set(val.patients)
    assert 0.05 < len(val) / len(index) < 0.15


def test_prune_cache_deletes_only_caches_unused_for_long(dataset, tmp_path, decode_counter):
    from pneumoscan.cli import main
    from pneumoscan.data import prune_cache

    records = index_dataset(dataset, split="train", check=False).records
    folder = tmp_path / "cache"
    old = build_cache(records, 32, folder, progress=False)
    new = build_cache(records, 24, folder, progress=False)
    (folder / "notes.txt").write_text("not a cache")
    stale_partial = folder / "dead.npy.partial"
    stale_partial.write_bytes(b"x" * 10)
    long_ago = time.time() - 40 * 86400
    for f in (folder / f"{old.key}.json", folder / f"{old.key}.npy", stale_partial):
        os.utime(f, (long_ago, long_ago))
    # Reusing a cache marks it as used: the 24 px one stays however old its files are.
    os.utime(folder / f"{new.key}.npy", (long_ago, long_ago))
    build_cache(records, 24, folder, progress=False)

    dry = prune_cache(folder, older_than_days=30, dry_run=True)
    assert {p.name for p, _ in dry} == {f"{old.key}.json", f"{old.key}.npy", "dead.npy.partial"}
    assert all(p.exists() for p, _ in dry)
    assert main(["data", "prune-cache", "--cache-dir", str(folder), "--older-than-days", "30"]) == 0
    left = sorted(p.name for p in folder.iterdir() if not p.name.endswith(".lock"))
    assert left == sorted([f"{new.key}.json", f"{new.key}.npy", "notes.txt"])
    decode_counter.clear()
    build_cache(records, 24, folder, progress=False)  # still valid after the prune
    assert decode_counter == []
    assert prune_cache(tmp_path / "absent") == []
    with pytest.raises(ValueError):
        prune_cache(folder, older_than_days=-1)
