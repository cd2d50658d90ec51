"""Smoke test of benchmarks/peer_densenet.py: 3 images, 1 repeat, every contender, the JSON it writes."""

import importlib.util
import json
from pathlib import Path

import pytest

from conftest import SHARED_DATA, fullres_samples_path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "peer_densenet.py"


def _load():
    spec = importlib.util.spec_from_file_location("peer_densenet", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_peer_benchmark_runs_on_three_images(tmp_path):
    pytest.importorskip("monai")
    fullres, small = fullres_samples_path(), SHARED_DATA / "chest_xray_224"
    if not fullres.is_dir() or not small.is_dir():
        pytest.skip(f"shared images not found ({fullres}, {small})")
    out = tmp_path / "peer.json"
    doc = _load().main(["--fullres", str(fullres), "--small", str(small), "--fullres-limit", "3", "--n-small", "3",
                        "--n-single", "3", "--repeats", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["contenders"] == doc["contenders"] and "densenet121-monai" in saved["contenders"]
    assert any(name.startswith("pneumoscan-") and "torch" in name for name in saved["contenders"])
    assert len(saved["load_average_start"]) == 3 and len(saved["load_average_end"]) == 3
    for key in ("batch_fullres", "batch_small", "single_image"):
        part = saved[key]
        assert part["n_images"] in (1, 3)
        ratios = part["times_faster_than_densenet121_median"]
        assert set(ratios) == set(saved["contenders"]) - {"densenet121-monai"}
        assert all(r > 0 for r in ratios.values())
    assert saved["batch_fullres"]["contenders"]["densenet121-monai"]["images_per_s_median"] > 0
    assert saved["single_image"]["contenders"]["densenet121-monai"]["p90_ms"] > 0
