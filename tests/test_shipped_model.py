"""The model that ships inside the package: present, small, self-describing, documented, and reproducible
from the data where the data is available."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from pneumoscan import metrics as M
from pneumoscan.checkpoint import load_checkpoint
from pneumoscan.inference.predictor import PACKAGED_MODEL, Predictor, default_model_path

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def shipped():
    assert PACKAGED_MODEL.is_file(), f"the shipped model is missing: {PACKAGED_MODEL}"
    return load_checkpoint(PACKAGED_MODEL)


def test_shipped_model_is_small_and_self_describing(shipped):
    assert PACKAGED_MODEL.stat().st_size <= 25 * 1024 * 1024
    meta = shipped.meta
    assert meta["model"] == "efficientnet-lite0"
    assert json.loads(PACKAGED_MODEL.with_suffix(".json").read_text()) == json.loads(json.dumps(meta))
    op = meta["operating_point"]
    assert op["method"] == "min_cost_at_target_sensitivity" and op["val_sensitivity"] >= op["target_sensitivity"]
    assert 0.0 < op["threshold"] < 1.0 and meta["calibration"]["temperature"] > 0
    assert meta["val_summary"]["roc_auc"]["value"] >= 0.99
    assert meta["val_summary"]["n_images"] == 575


def test_model_card_matches_the_shipped_model(shipped):
    card = (REPO / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert card == (REPO / "src/pneumoscan/assets/MODEL_CARD.md").read_text(encoding="utf-8"), \
        "MODEL_CARD.md and src/pneumoscan/assets/MODEL_CARD.md (served by the web app) differ"
    assert "not a diagnosis" in card.lower()
    assert "doi:10.17632/rscbjbr9sj.2" in card
    op, summary = shipped.meta["operating_point"], shipped.meta["val_summary"]
    assert f"**{op['threshold']:.3f}**" in card, "the card's operating threshold is not the model's"
    assert f"{summary['roc_auc']['value']:.4f}" in card
    sens = summary["thresholds"]["operating"]["metrics"]["sensitivity"]["value"]
    spec = summary["thresholds"]["operating"]["metrics"]["specificity"]["value"]
    assert f"{sens:.3f}" in card and f"{spec:.3f}" in card
    for heading in ("Intended use", "What it has not been tested on", "Data", "Preprocessing", "Operating threshold",
                    "Validation metrics", "Calibration", "Known failure modes"):
        assert re.search(rf"^## {heading}", card, re.M), heading


def test_shipped_model_predicts_without_a_model_argument(monkeypatch):
    monkeypatch.delenv("PNEUMOSCAN_MODEL", raising=False)
    assert default_model_path() == PACKAGED_MODEL
    p = Predictor.from_checkpoint(default_model_path())
    img = np.random.default_rng(0).integers(0, 255, (300, 240), dtype=np.uint8)
    [pred] = p.predict([img])
    assert 0.0 <= pred.probability <= 1.0 and pred.threshold == pytest.approx(p.threshold)


SHIPPED_ONNX = PACKAGED_MODEL.with_suffix(".onnx")


def test_shipped_onnx_is_the_shipped_checkpoint_exported(shipped):
    """model.onnx beside model.safetensors names the checkpoint's SHA-256, carries the same metadata and
    reference, and is what the default backend runs (no export is built)."""
    import onnx

    from pneumoscan.inference.scoring import CHECKPOINT_SHA256_KEY, read_onnx_metadata, read_onnx_reference
    from pneumoscan.utils import file_sha256

    assert SHIPPED_ONNX.is_file(), f"the shipped ONNX model is missing: {SHIPPED_ONNX} (pneumoscan export)"
    assert SHIPPED_ONNX.stat().st_size <= 25 * 1024 * 1024
    props = {p.key: p.value for p in onnx.load(str(SHIPPED_ONNX), load_external_data=False).metadata_props}
    assert props[CHECKPOINT_SHA256_KEY] == file_sha256(PACKAGED_MODEL), \
        "model.onnx was not exported from the shipped model.safetensors: run pneumoscan export again"
    assert read_onnx_metadata(SHIPPED_ONNX) == shipped.meta
    ref = read_onnx_reference(SHIPPED_ONNX)
    assert set(ref) == set(shipped.extra)
    for name, value in shipped.extra.items():
        np.testing.assert_array_equal(ref[name], value.numpy())
    p = Predictor.from_checkpoint(PACKAGED_MODEL)
    assert (p.backend, p.onnx_path) == ("onnxruntime", str(SHIPPED_ONNX))


def test_shipped_onnx_agrees_with_the_checkpoint_within_1e_5():
    rng = np.random.default_rng(3)
    films = [rng.integers(0, 256, (200 + 37 * k, 180 + 23 * k), dtype=np.uint8) for k in range(6)]
    onnx_p = Predictor.from_checkpoint(PACKAGED_MODEL)
    torch_p = Predictor.from_checkpoint(PACKAGED_MODEL, backend="torch")
    x = onnx_p.network.inputs(films)
    np.testing.assert_allclose(onnx_p.network.runner(x), torch_p.network.runner(x), atol=1e-4)  # logits
    a, b = onnx_p.predict_proba(films), torch_p.predict_proba(films)
    assert np.max(np.abs(a - b)) <= 1e-5


@pytest.mark.shared_data
def test_shipped_numbers_reproduce_from_the_data(shipped, shared_data_root, tmp_path):
    """Re-score the validation split (same patient-level split) and recover the stored AUC and threshold."""
    from pneumoscan.config import EvalConfig
    from pneumoscan.data import build_cache, index_dataset, split_index
    from pneumoscan.onboarding.operating_point import choose_operating_point as validation_summary
    from pneumoscan.preprocessing import Preprocessing
    from pneumoscan.inference.predictor import model_from_checkpoint
    from pneumoscan.inference.scoring import score_cached as score_images

    cfg = shipped.meta["config"]
    _, val = split_index(index_dataset(shared_data_root, split="train"), cfg["data"]["val_fraction"], cfg["data"]["split_seed"])
    spec = Preprocessing.from_dict(shipped.meta["preprocessing"])
    cache = build_cache(val.records, spec.image_size, REPO / ".pneumoscan-cache", progress=False)
    assert len(cache.records) == 575
    logits = score_images(model_from_checkpoint(shipped), cache.images, np.arange(len(cache.records)), spec, logits=True)
    y = cache.labels.astype(int)
    assert M.roc_auc(y, logits) == pytest.approx(shipped.meta["val_summary"]["roc_auc"]["value"], abs=1e-4)
    ecfg = EvalConfig(**{**cfg["eval"], "bootstrap_samples": 50})
    meta, _ = validation_summary(list(cache.records), logits, ecfg)
    assert meta["operating_point"]["threshold"] == pytest.approx(shipped.meta["operating_point"]["threshold"], abs=1e-3)
