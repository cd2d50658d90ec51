"""The drift check's null off the hot path (issue #27): the table a reference carries, its lookup, the identity
that keeps a stale table out, the disk cache of a model without one, and the shipped model's table."""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import numpy as np
import pytest

from pneumoscan.gate.drift import MIX_STEP, DriftCheck, _within
from pneumoscan.gate.drift_null import NULL_SIZES, NullTable, table_sizes
from pneumoscan.gate.reference import TENSOR_PREFIX, Reference, l2_normalize
from pneumoscan.onboarding.reference_builder import with_drift_null


def _world(seed: int = 0, c: int = 16, n: int = 1200):
    """Two classes (1 = "pneumonia", about 70%) with their own feature centre and intensity level."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.7).astype(np.int8)
    centers = rng.normal(size=(2, c))
    feats = l2_normalize(centers[y] + 0.6 * rng.normal(size=(n, c)))
    desc = (0.45 + 0.1 * y[:, None] + 0.08 * rng.normal(size=(n, 7))).astype(np.float32)
    return feats, desc, y


def _reference(feats, desc, y, n_bank=300, n_val=160, labels=True) -> Reference:
    v = slice(n_bank, n_bank + n_val)
    return Reference(bank=feats[:n_bank], val_features=feats[v], bank_descriptors=desc[:n_bank],
                     val_descriptors=desc[v], knn_k=5, knn_cut=1.0, bank_labels=y[:n_bank] if labels else None,
                     val_labels=y[v] if labels else None)


#: Fewer resamples than the predictor's 200, for speed; a table names the number it was computed with.
R = 50


@pytest.fixture(scope="module")
def world():
    feats, desc, y = _world()
    return feats, desc, y, with_drift_null(_reference(feats, desc, y), n_resamples=R)


def test_the_null_is_the_resampled_one_computed_by_counts(world):
    """The null of bootstrap batches, from counts of films, is the one of the gathered kernel matrices."""
    ref = dataclasses.replace(world[3], drift_null=None)
    check = DriftCheck(ref, n_resamples=30)
    n, grid = 100, 14
    rng = np.random.default_rng(check.seed + n + 1000 * grid)
    k1 = int(round(n * grid * MIX_STEP))
    f, i = [], []
    for _ in range(check.n_resamples):
        rows = np.concatenate([rng.choice(check._val_pools[0], n - k1), rng.choice(check._val_pools[1], k1)])
        parts = []
        for mmd in (check._feat, check._int):
            kv, to_class = mmd._val_sums
            parts.append((_within(kv[np.ix_(rows, rows)]), to_class[rows].mean(0)))
        f_, i_, _ = check._components(parts[0], parts[1], None)
        f.append(f_)
        i.append(i_)
    sf, si = max(np.quantile(f, 0.95), 1e-12), max(np.quantile(i, 0.95), 1e-12)
    expected = (sf, si, np.quantile(np.maximum(np.array(f) / sf, np.array(i) / si), 0.95))
    np.testing.assert_allclose(check.null(n, grid), expected, rtol=1e-9)


def test_a_reference_built_carries_its_table_and_a_check_uses_it_without_kernel_matrices(world):
    feats, desc, y, ref = world
    table = ref.drift_null
    assert table["sizes"] == table_sizes(160) == [50, 60, 70, 80, 90, 100, 125, 150, 160] and table["n_mixes"] == 21
    assert table["refit"] and len(table["threshold"]) == 9 and len(table["threshold"][0]) == 21
    check, bare = DriftCheck(ref, n_resamples=R), DriftCheck(dataclasses.replace(ref, drift_null=None), n_resamples=R)
    assert check.table is not None and bare.table is None
    rows = np.arange(600, 700)  # 100 films, a stored size: the same numbers as the check without a table
    with_table, without = check.test(feats[rows], desc[rows]), bare.test(feats[rows], desc[rows])
    assert with_table == without
    assert "_val_sums" not in check._feat.__dict__ and "_val_sums" not in check._int.__dict__
    grid = check.grid_mix(with_table.estimated_mix)
    assert check.null(100, grid) == bare.compute_null(100, grid)


def test_between_stored_sizes_the_null_is_interpolated_in_one_over_n(world):
    check = DriftCheck(world[3], n_resamples=R)
    lo, hi, n = np.array(check.null(100, 14)), np.array(check.null(125, 14)), 111
    t = (1 / 100 - 1 / n) / (1 / 100 - 1 / 125)
    np.testing.assert_allclose(check.null(n, 14), (1 - t) * lo + t * hi, rtol=1e-12)
    # A mix given by the caller is not in the table: computed (the grid mix, not refitted)
    assert check.null(111, 14, refit=False) == check.compute_null(111, 14, False)


def test_a_stale_or_damaged_table_is_never_used(world, caplog):
    feats, desc, y, ref = world
    table = ref.drift_null
    moved = dataclasses.replace(ref, val_features=l2_normalize(ref.val_features + 0.01))  # a rebuilt reference
    unlabelled = dataclasses.replace(ref, bank_labels=None, val_labels=None)
    assert DriftCheck(ref, n_resamples=R).table is not None
    assert DriftCheck(moved, n_resamples=R).table is None and DriftCheck(unlabelled, n_resamples=R).table is None
    assert DriftCheck(ref, n_resamples=R, alpha=0.1).table is None and DriftCheck(ref).table is None
    assert DriftCheck(ref, n_resamples=R, max_batch=120).table is None
    with caplog.at_level(logging.WARNING, logger="pneumoscan.gate.drift"):
        damaged = DriftCheck(dataclasses.replace(ref, drift_null={**table, "threshold": table["threshold"][:-1]}),
                             n_resamples=R)
    assert damaged.table is None and "unreadable" in caplog.text
    with pytest.raises(ValueError, match="positive finite"):
        NullTable.from_doc({**table, "threshold": [[-1.0] * 21] * 9})
    # An unlabelled reference's table holds the one null it needs
    own = with_drift_null(unlabelled, n_resamples=R).drift_null
    assert own["n_mixes"] == 1 and not own["refit"]
    assert DriftCheck(dataclasses.replace(unlabelled, drift_null=own), n_resamples=R).table is not None


def test_the_table_travels_in_the_checkpoint_as_stored(world):
    """Through the float16 tensors (as Reference.to_tensors makes them, without torch here) and the JSON metadata,
    the reference still matches its table."""
    ref = world[3]
    tensors = {f"{TENSOR_PREFIX}{k}": np.ascontiguousarray(getattr(ref, k), np.float16)
               for k in ("bank", "val_features", "bank_descriptors", "val_descriptors")}
    meta = json.loads(json.dumps(ref.to_meta()))
    back = Reference.from_checkpoint_parts(tensors, meta)
    assert "drift_null" not in back.info and back.drift_null == ref.drift_null
    check = DriftCheck(back, n_resamples=R)
    assert check.table is not None and check.constants["features"][0] == ref.drift_null["gamma"]["features"]


def test_without_a_table_each_null_is_computed_once_and_cached_on_disk(world, tmp_path, monkeypatch):
    feats, desc, y, ref = world
    bare = dataclasses.replace(ref, drift_null=None)
    rows = np.arange(700, 777)
    first = DriftCheck(bare, n_resamples=R, cache_dir=tmp_path).test(feats[rows], desc[rows])
    [path] = tmp_path.glob("*.drift-null.json")
    assert os.stat(path).st_mode & 0o777 == 0o600
    calls = []
    monkeypatch.setattr(DriftCheck, "compute_null", lambda self, *a: calls.append(a))
    again = DriftCheck(bare, n_resamples=R, cache_dir=tmp_path)
    assert again.test(feats[rows], desc[rows]) == first and not calls
    assert "_val_sums" not in again._feat.__dict__  # the kernel constants came from the cache too
    path.write_text("{not json")
    monkeypatch.undo()
    assert DriftCheck(bare, n_resamples=R, cache_dir=tmp_path).test(feats[rows], desc[rows]) == first  # recomputed
    assert json.loads(path.read_text())["entries"]


def test_the_grid_of_sizes_reaches_the_largest_batch():
    assert table_sizes(500) == list(NULL_SIZES) and table_sizes(575) == [*NULL_SIZES, 575]
    assert table_sizes(130)[-2:] == [125, 130]


def test_the_shipped_model_looks_its_null_up():
    from pneumoscan.inference.predictor import PACKAGED_MODEL, Predictor

    check = Predictor.from_checkpoint(PACKAGED_MODEL).drift
    assert check.table is not None, "the shipped model's drift null table is missing or stale: run " \
                                    "scripts/build_reference.py --null-only"
    assert check.table.sizes.tolist() == table_sizes(check.max_batch) and check.table.values.shape[2] == 21


def test_build_reference_null_only_adds_the_table_and_changes_nothing_else(world, tiny_checkpoint, tmp_path):
    """``scripts/build_reference.py --null-only`` (how the shipped model got its table): the weights, the other
    tensors, the reference and the ONNX graph beside it stay as they are; the export names the new file."""
    import subprocess
    import sys
    from pathlib import Path

    import onnx

    from pneumoscan.checkpoint import load_checkpoint, load_checkpoint_arrays, save_checkpoint
    from pneumoscan.inference.export import export_onnx
    from pneumoscan.inference.scoring import CHECKPOINT_SHA256_KEY, read_onnx_metadata
    from pneumoscan.utils import file_sha256

    ref = dataclasses.replace(world[3], drift_null=None)
    src = tmp_path / "src" / "model.safetensors"
    src.parent.mkdir()
    ckpt = load_checkpoint(tiny_checkpoint)
    save_checkpoint(src, ckpt.state_dict, {**ckpt.meta, "reference": ref.to_meta()}, extra=ref.to_tensors())
    export_onnx(src, src.with_suffix(".onnx"))
    out = tmp_path / "out" / "model.safetensors"
    script = Path(__file__).resolve().parents[1] / "scripts" / "build_reference.py"
    done = subprocess.run([sys.executable, str(script), "--null-only", "--model", str(src), "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "drift null table: 9 batch sizes (50..160) x 21 mixes" in done.stdout
    before, after = load_checkpoint_arrays(src, weights=True), load_checkpoint_arrays(out, weights=True)
    assert before.state_dict.keys() == after.state_dict.keys() and before.extra.keys() == after.extra.keys()
    for name in before.state_dict:
        np.testing.assert_array_equal(before.state_dict[name], after.state_dict[name])
    for name in before.extra:
        np.testing.assert_array_equal(before.extra[name], after.extra[name])
    table = after.meta["reference"].pop("drift_null")
    assert after.meta == before.meta
    back = Reference.from_checkpoint_parts(after.extra, {**after.meta["reference"], "drift_null": table})
    assert DriftCheck(back).table is not None  # the check's default parameters: what the predictor uses
    old, new = onnx.load(str(src.with_suffix(".onnx"))), onnx.load(str(out.with_suffix(".onnx")))
    assert old.graph.SerializeToString() == new.graph.SerializeToString()
    assert read_onnx_metadata(out.with_suffix(".onnx")) == load_checkpoint_arrays(out).meta
    props = {p.key: p.value for p in new.metadata_props}
    assert props[CHECKPOINT_SHA256_KEY] == file_sha256(out)
    again = subprocess.run([sys.executable, str(script), "--null-only", "--model", str(src), "--out", str(out)],
                           capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "exists" in again.stderr  # never over an existing file
