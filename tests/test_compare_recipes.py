"""scripts/compare_recipes.py: the recipe comparison behind docs/recipe_comparison.md, on tiny runs."""

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from pneumoscan.training import train
from test_train import make_blob_dataset, small_config

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_recipes.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("compare_recipes", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
    """Two EMA runs of one recipe that differ only in the seed, on one validation split."""
    root = tmp_path_factory.mktemp("cmp")
    data = make_blob_dataset(root / "data")
    runs = []
    for seed in (3, 4):
        cfg = small_config(data, root / "cache", **{"train.ema_decay": 0.9, "train.epochs": 2, "train.seed": seed})
        train(cfg, root / f"seed{seed}", progress=False)
        runs.append(root / f"seed{seed}")
    # A third run that differs in the EMA warm-up only: another recipe, not another seed.
    cfg = small_config(data, root / "cache", **{"train.ema_decay": 0.9, "train.epochs": 2, "train.seed": 5,
                                                "train.ema_warmup": "false"})
    train(cfg, root / "nowarmup", progress=False)
    return root, runs


def test_compares_candidates_seeds_and_pairs(two_seeds):
    root, (a, b) = two_seeds
    out = root / "docs" / "cmp"
    mod = _load_script()
    rc = mod.main([str(a), str(b), str(root / "nowarmup"), "--raw", str(a), "--tta", str(a), "--ensemble", f"{a},{b}",
                   "--paired", f"{a},{b}", "--paired", f"{a},{a}", "--cache-dir", str(root / "cache"), "--out", str(out)])
    assert rc == 0
    result = json.loads(out.with_suffix(".json").read_text())
    kinds = [c["kind"] for c in result["candidates"]]
    assert kinds == ["run", "run", "run", "raw", "tta", "ensemble"]
    by_name = {c["name"]: c for c in result["candidates"]}
    for c in result["candidates"]:
        assert 0.0 <= c["val_auc"]["value"] <= 1.0
        assert c["val_auc"]["ci"][0] <= c["val_auc"]["value"] <= c["val_auc"]["ci"][1]
        assert c["operating"]["sensitivity"]["value"] >= result["target_sensitivity"]
    # The cross-fitted estimate is the library's (the one `pneumoscan calibrate` prints), on the calibrated scores.
    import numpy as np

    from pneumoscan.data import index_dataset
    from pneumoscan.onboarding.operating_point import CROSS_FIT_METHOD

    cf = by_name["seed3"]["cross_fitted"]
    assert cf["method"] == CROSS_FIT_METHOD and cf["n_repeats"] + cf["n_skipped"] == 200 and cf["seed"] == 0
    assert cf["n_images"] == len(index_dataset(a / "split.csv", split="val").records)
    for m in ("sensitivity", "specificity"):
        assert cf[m]["ci"][0] <= cf[m]["median"] <= cf[m]["ci"][1] or np.isnan(cf[m]["median"])
    # Every run's own metrics.csv is carried over: the AUC of each epoch, raw and averaged.
    assert len(by_name["seed3"]["epoch_val_auc"]) == 2 and len(by_name["seed3"]["epoch_val_auc_raw"]) == 2
    # The seed spread groups the two runs that differ only in train.seed, and leaves the warm-up-less one out.
    (spread,) = result["seed_spread"]
    assert spread["seeds"] == [3, 4]
    assert spread["best_val_auc"] == [by_name["seed3"]["val_auc"]["value"], by_name["seed4"]["val_auc"]["value"]]
    # Paired: the point difference is the difference of the two AUCs; a model against itself differs by 0, p = 1.
    ab, aa = result["paired"]
    assert ab["diff"] == pytest.approx(by_name["seed3"]["val_auc"]["value"] - by_name["seed4"]["val_auc"]["value"], abs=1e-9)
    assert ab["ci"][0] <= ab["diff"] <= ab["ci"][1] and 0.0 <= ab["delong_p"] <= 1.0
    assert aa["diff"] == 0.0 and aa["ci"] == [0.0, 0.0] and aa["delong_p"] == 1.0
    tables = (out.parent / "cmp_tables.md").read_text()
    assert "| seed3 |" in tables and "paired comparison" in tables and "seed3 - seed4" in tables
    assert (out.parent / "cmp_epochs.png").stat().st_size > 1000


def test_refuses_runs_with_different_validation_splits(two_seeds, tmp_path):
    root, (a, b) = two_seeds
    other = tmp_path / "other"
    shutil.copytree(b, other)
    lines = (other / "split.csv").read_text().splitlines()
    (other / "split.csv").write_text("\n".join(lines[:-1]) + "\n")  # one image fewer
    with pytest.raises(SystemExit, match="validation split"):
        _load_script().main([str(a), str(other), "--cache-dir", str(root / "cache"), "--out", str(tmp_path / "x")])
