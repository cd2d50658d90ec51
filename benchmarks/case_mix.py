"""The shipped model's safeguards away from the training case mix and the training acquisition.

Validation (77 % pneumonia) is not where a site lives: most see far fewer pneumonias, and another acquisition
chain. For the model (default: the shipped one, ONNX Runtime, as ``predict`` runs it) this scores its own held-out
validation films twice: as they are (training-like) and through the simulated site's acquisition chain
(``tests/sitefactory.py``: a 128 px export, contrast x0.8, gamma 0.9, noise). Then, at case mixes of 20 %, 50 % and
77 % pneumonia (each class reweighted, or batches drawn at that mix):

* **calibration**: expected calibration error of the stored (temperature-scaled) probability at that mix;
* **operating point**: sensitivity and specificity at the stored threshold (per class, so the same at every mix) and
  what a flag means there (PPV, NPV);
* **scope gate**: the share of these chest films refused ("not a chest radiograph": every refusal of these
  pediatric frontal chest films is a false one) and the share scored with the unfamiliar-film caution (a chest
  film unlike the training films), per class and at each mix;
* **drift check**: ``--batches`` batches of ``--batch`` in-scope films drawn at each mix (without replacement within
  a batch); the share called shifted, and the share where the intensity component alone would ring. On the
  training-like films every "shifted" is a false alarm (the target is at most 5 %); on the site films every
  "not shifted" is a miss.

    python benchmarks/case_mix.py [--model M] [--out benchmarks/results/case_mix.json]
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

MIXES = (0.2, 0.5, 0.77)


def draw(rng: np.random.Generator, pos: np.ndarray, neg: np.ndarray, n: int, mix: float) -> np.ndarray:
    """Row indices of one batch of ``n`` at ``mix`` pneumonia (without replacement within the batch)."""
    k = int(round(n * mix))
    return np.concatenate([rng.choice(pos, k, replace=False), rng.choice(neg, n - k, replace=False)])


def measure(y: np.ndarray, results: list, drift, threshold: float, *, batches: int, batch: int, seed: int) -> dict:
    from pneumoscan import metrics as M

    p = np.array([r.probability for r in results])
    inside = np.array([bool(r.in_scope) for r in results])
    refused = {"pneumonia": float(1 - inside[y == 1].mean()), "normal": float(1 - inside[y == 0].mean())}
    caution = np.array([bool(r.scope_caution) for r in results])
    cautioned = {"pneumonia": float(caution[y == 1].mean()), "normal": float(caution[y == 0].mean())}
    sens = float((p[y == 1] >= threshold).mean())
    spec = float((p[y == 0] < threshold).mean())
    out = {"n": int(y.size), "n_pneumonia": int(y.sum()), "auc": M.roc_auc(y, p), "sensitivity": sens,
           "specificity": spec, "scope_refused_by_class": refused, "scope_cautioned_by_class": cautioned,
           "mixes": {}}
    feats = np.stack([r.features for r in results])
    desc = np.stack([r.descriptor for r in results])
    pos, neg = np.flatnonzero((y == 1) & inside), np.flatnonzero((y == 0) & inside)
    rng = np.random.default_rng(seed)
    for mix in MIXES:
        ppv = mix * sens / max(mix * sens + (1 - mix) * (1 - spec), 1e-12)
        npv = (1 - mix) * spec / max((1 - mix) * spec + mix * (1 - sens), 1e-12)
        shifted = intensity = 0
        stats = []
        for _ in range(batches):
            rows = draw(rng, pos, neg, batch, mix)
            res = drift.test(feats[rows], desc[rows])
            shifted += res.shifted
            intensity += res.intensity_component > res.threshold
            stats.append(res.statistic)
        out["mixes"][f"{round(100 * mix)}pct"] = {
            "ece": M.ece_at_prevalence(y, p, mix), "ppv": ppv, "npv": npv,
            "scope_refused": mix * refused["pneumonia"] + (1 - mix) * refused["normal"],
            "scope_cautioned": mix * cautioned["pneumonia"] + (1 - mix) * cautioned["normal"],
            "drift_shifted_share": shifted / batches, "drift_intensity_alone_share": intensity / batches,
            "drift_median_statistic": float(np.median(stats)), "drift_threshold": float(res.threshold)}
    return out


def main(argv: list[str] | None = None) -> int:
    from pneumoscan.checkpoint import load_checkpoint
    from pneumoscan.data import model_split
    from pneumoscan.inference.predictor import PACKAGED_MODEL, Predictor
    from pneumoscan.io import read_image
    from pneumoscan.utils import atomic_write_text
    from sitefactory import site_film

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=PACKAGED_MODEL)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get(
        "PNEUMOSCAN_DATA", HERE.parent.parent / "shared/data/chest_xray_224")))
    parser.add_argument("--batch", type=int, default=60)
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "case_mix.json")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    info = load_checkpoint(args.model).info
    _, val_idx = model_split(args.data, info.config.get("data") or {})
    records = list(val_idx.records)
    y = np.array([r.label for r in records])
    predictor = Predictor.from_checkpoint(args.model)
    drift = predictor.drift
    films = [read_image(r.path) for r in records]
    sets = {"training_like": films, "simulated_site": [site_film(g, i) for i, g in enumerate(films)]}
    out = {"model": str(args.model), "threshold": predictor.threshold, "temperature": info.temperature,
           "batch": args.batch, "batches": args.batches, "sets": {}}
    for name, images in sets.items():
        results = predictor.predict(images)
        out["sets"][name] = m = measure(y, results, drift, predictor.threshold, batches=args.batches,
                                        batch=args.batch, seed=0)
        print(f"{name}: AUC {m['auc']:.4f}, sens {m['sensitivity']:.3f}, spec {m['specificity']:.3f}, "
              f"scope refused pneumonia {m['scope_refused_by_class']['pneumonia']:.3f} "
              f"normal {m['scope_refused_by_class']['normal']:.3f}, cautioned pneumonia "
              f"{m['scope_cautioned_by_class']['pneumonia']:.3f} normal {m['scope_cautioned_by_class']['normal']:.3f}")
        for mix, v in m["mixes"].items():
            print(f"  {mix}: ECE {v['ece']:.3f}, PPV {v['ppv']:.3f}, NPV {v['npv']:.3f}, scope refused "
                  f"{v['scope_refused']:.3f}, cautioned {v['scope_cautioned']:.3f}, drift shifted "
                  f"{v['drift_shifted_share']:.2f} (intensity alone "
                  f"{v['drift_intensity_alone_share']:.2f}; median statistic {v['drift_median_statistic']:.2f} "
                  f"vs {v['drift_threshold']:.2f})", flush=True)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    out["load_average"] = os.getloadavg()
    atomic_write_text(args.out, json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
