"""Does the score mean what it says? Calibration methods measured on validation and on a simulated site.

For a model (default: the shipped one), its validation films (its own patient split) are scored clean, through a
simulated site's acquisition chain (``tests/sitefactory.py``: a 128 px export, contrast x0.8, gamma 0.9, noise), and
through the training augmentation (``--copies`` random copies each). Temperatures tried:

* ``validation_nll``: fitted by likelihood on the clean validation films (the method shipped until 2026-12);
* ``floor_1``: the same, never below 1 (a validation set the model nearly separates rewards confidence: a
  temperature that sharpens is not credible there);
* ``augmented_validation``: fitted on the augmented copies of the validation films (the perturbations the model was
  trained to tolerate, as a stand-in for another acquisition);
* ``none``: temperature 1.

For each: expected calibration error (10 bins), Brier score, the share (and count) of NORMAL films scoring 99 or
more, the highest NORMAL score, on validation and at the simulated site, and the ECE at other case mixes (30% and 10%
pneumonia instead of validation's 77%: each class reweighted); the AUC does not depend on the temperature.
``stored`` is the temperature the model carries. With ``--clean-bn`` the model's BatchNorm statistics are first re-estimated on its clean (un-augmented)
training films (the release candidate of issue #24).

    python benchmarks/calibration_shift.py --out benchmarks/results/calibration_shift.json [--clean-bn]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


#: Case mixes the calibration is also measured at (share of pneumonia): most sites see far fewer than validation.
MIXES = (0.3, 0.1)


def measure(y: np.ndarray, z: np.ndarray, t: float) -> dict:
    from pneumoscan import metrics as M

    p = M.apply_temperature(z, t)
    normal = p[y == 0]
    out = {"ece": M.ece(y, p), "brier": M.brier(y, p), "normal_ge_99": int((normal >= 0.99).sum()),
           "normal_ge_99_share": float((normal >= 0.99).mean()), "max_normal_score": float(100 * normal.max()),
           "auc": M.roc_auc(y, p), "n_normal": int((y == 0).sum()), "n": int(y.size),
           "prevalence": float(np.mean(y))}
    for mix in MIXES:
        out[f"ece_at_{round(100 * mix)}pct_pneumonia"] = M.ece_at_prevalence(y, p, mix)
    return out


def main(argv: list[str] | None = None) -> int:
    import torch

    from pneumoscan import metrics as M
    from pneumoscan.checkpoint import load_checkpoint
    from pneumoscan.config import AugmentConfig
    from pneumoscan.data import build_cache, model_split
    from pneumoscan.inference.predictor import PACKAGED_MODEL
    from pneumoscan.inference.torch_scoring import model_from_checkpoint, outputs_cached
    from pneumoscan.io import read_image
    from pneumoscan.onboarding.site import adabn
    from pneumoscan.preprocessing import normalize, resize_for_model
    from pneumoscan.training.augment import build_augmentation
    from pneumoscan.utils import atomic_write_text
    from sitefactory import site_film

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=PACKAGED_MODEL)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get(
        "PNEUMOSCAN_DATA", HERE.parent.parent / "shared/data/chest_xray_224")))
    parser.add_argument("--cache-dir", type=Path, default=Path(".pneumoscan-cache"))
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--clean-bn", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "calibration_shift.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    ckpt = load_checkpoint(args.model)
    spec = ckpt.info.preprocessing
    train_idx, val_idx = model_split(args.data, ckpt.info.config.get("data") or {})
    records = list(train_idx.records) + list(val_idx.records)
    cache = build_cache(records, spec, args.cache_dir, progress=False)
    val_paths = {r.path for r in val_idx.records}
    is_val = np.array([r.path in val_paths for r in cache.records])
    tr, va = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    model = model_from_checkpoint(ckpt)
    if args.clean_bn:
        adabn(model, np.asarray(cache.images[tr]), spec, batch_size=64)
    y = np.array([cache.records[i].label for i in va])
    z_val, _, _ = outputs_cached(model, cache.images, va, spec)
    site = np.stack([resize_for_model(site_film(read_image(cache.records[i].path), int(i)), spec) for i in va])
    z_site, _, _ = outputs_cached(model, site, np.arange(len(site)), spec)
    aug = build_augmentation(AugmentConfig(**(ckpt.info.config.get("augment") or {})))
    torch.manual_seed(0)
    z_aug = []
    with torch.no_grad():
        model.eval()
        for _ in range(args.copies):
            for start in range(0, len(va), 64):
                rows = va[start:start + 64]
                x01 = torch.from_numpy(np.asarray(cache.images[rows])).unsqueeze(1).float() / 255.0
                z_aug.append(model(normalize(aug(x01), spec))[:, 0].numpy())
    z_aug = np.concatenate(z_aug).astype(np.float64)
    y_aug = np.tile(y, args.copies)
    t_val = M.fit_temperature(z_val, y)
    temps = {"stored": float(ckpt.info.temperature), "validation_nll": t_val, "floor_1": max(1.0, t_val),
             "augmented_validation": M.fit_temperature(z_aug, y_aug), "none": 1.0}
    out = {"model": str(args.model), "clean_bn": args.clean_bn, "copies": args.copies,
           "stored_temperature": ckpt.info.temperature, "methods": {}}
    for name, t in temps.items():
        out["methods"][name] = {"temperature": t, "validation": measure(y, z_val, t),
                                "simulated_site": measure(y, z_site, t), "augmented_validation": measure(y_aug, z_aug, t)}
        v, s = out["methods"][name]["validation"], out["methods"][name]["simulated_site"]
        print(f"{name:22s} T={t:.3f}  val ECE {v['ece']:.3f} normal>=99 {v['normal_ge_99']}/{v['n_normal']}  "
              f"site ECE {s['ece']:.3f} normal>=99 {s['normal_ge_99']}/{s['n_normal']} (AUC {s['auc']:.4f}); "
              f"site ECE at 30%/10% pneumonia {s['ece_at_30pct_pneumonia']:.3f}/{s['ece_at_10pct_pneumonia']:.3f}")
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["load_average"] = os.getloadavg()
    atomic_write_text(args.out, json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
