"""The onboarding ladder at a simulated new site (issue 15): out of the box, after the drift check, after
``adapt``, and after ``adapt`` and ``calibrate`` with 50, 100 and 200 labelled films.

The site (``tests/sitefactory.py``) is the shipped model's own held-out validation patients passed through another
acquisition chain (a 128-pixel export, flatter contrast, gamma 0.9, more noise). Its lowest-numbered patients are the
site's held-out test set, never used to adapt or calibrate; every rung is measured on them: sensitivity and
specificity at the model's threshold with 95% Wilson intervals, and the expected calibration error (ECE) with a
95% patient-bootstrap interval. Calibration subsets are stratified and seeded; each size is repeated with
``--repeats`` seeds and the median reported, with every repeat in the JSON.

    python benchmarks/site_onboarding.py --out benchmarks/results/site_onboarding.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from sitefactory import SITE, build_site, labelled_subset  # noqa: E402

from pneumoscan import metrics as M  # noqa: E402
from pneumoscan.data import write_manifest  # noqa: E402
from pneumoscan.inference.predictor import PACKAGED_MODEL, Predictor  # noqa: E402


def wilson(k: int, n: int, z: float = 1.96) -> list[float]:
    """95% Wilson score interval for k successes in n trials."""
    if n == 0:
        return [float("nan"), float("nan")]
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return [float(centre - half), float(centre + half)]


def measure(model: Path, test, *, n_boot: int = 1000) -> dict:
    """Sensitivity, specificity (Wilson) and ECE (patient bootstrap) of ``model`` on the site's test films."""
    p = Predictor.from_checkpoint(model)
    results = p.score_files([r.path for r in test], batch_size=32)
    y = np.array([r.label for r in test])
    probs = np.array([r.probability for r in results])
    in_scope = np.array([bool(r.in_scope) for r in results])
    pos = probs >= p.threshold
    tp, fn = int((pos & (y == 1)).sum()), int((~pos & (y == 1)).sum())
    tn, fp = int((~pos & (y == 0)).sum()), int((pos & (y == 0)).sum())
    groups = np.array([r.patient_id for r in test])
    rng = np.random.default_rng(0)
    uniq = np.unique(groups)
    eces = []
    for _ in range(n_boot):
        pick = rng.choice(uniq, len(uniq), replace=True)
        idx = np.concatenate([np.flatnonzero(groups == g) for g in pick])
        eces.append(M.ece(y[idx], probs[idx]))
    return {"threshold": p.threshold, "temperature": p.temperature, "n": len(y), "n_pos": int(y.sum()),
            "n_out_of_scope": int((~in_scope).sum()),
            "sensitivity": {"value": tp / max(1, tp + fn), "ci": wilson(tp, tp + fn)},
            "specificity": {"value": tn / max(1, tn + fp), "ci": wilson(tn, tn + fp)},
            "ece": {"value": M.ece(y, probs), "ci": [float(np.quantile(eces, 0.025)), float(np.quantile(eces, 0.975))]},
            "auc": M.roc_auc(y, probs)}


def main(argv: list[str] | None = None) -> int:
    from pneumoscan.onboarding.operating_point import rechoose_operating_point
    from pneumoscan.onboarding.site import adapt

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = os.environ.get("PNEUMOSCAN_DATA") or str(HERE.parents[1] / "shared" / "data" / "chest_xray_224")
    parser.add_argument("--data", default=default_data)
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 100, 200])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "site_onboarding.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0, load0 = time.perf_counter(), os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        site = build_site(args.data, tmp / "site")
        ladder: dict = {"site": SITE, "n_pool": len(site.pool), "n_test": len(site.test),
                        "pool_pneumonia": sum(r.label for r in site.pool),
                        "test_pneumonia": sum(r.label for r in site.test)}
        ladder["out_of_the_box"] = measure(PACKAGED_MODEL, site.test)
        shipped = Predictor.from_checkpoint(PACKAGED_MODEL)
        pool_results = shipped.score_files([r.path for r in site.pool], batch_size=32)
        ladder["drift_on_pool"] = shipped.check_drift(pool_results).to_dict()
        adapted = tmp / "adapted.safetensors"
        summary = adapt(PACKAGED_MODEL, [r.path for r in site.pool], adapted)
        ladder["adapt"] = {"summary": summary if isinstance(summary, dict) else str(summary),
                           "test": measure(adapted, site.test)}
        adapted_p = Predictor.from_checkpoint(adapted)
        drift_after = adapted_p.check_drift(adapted_p.score_files([r.path for r in site.pool], batch_size=32)) \
            if adapted_p.drift is not None else None
        ladder["drift_on_pool_after_adapt"] = None if drift_after is None else drift_after.to_dict()
        ladder["adapt_and_calibrate"] = {}
        for n in args.sizes:
            runs = []
            for seed in range(args.repeats):
                subset = labelled_subset(site.pool, n, seed=seed)
                manifest = tmp / f"cal_{n}_{seed}.csv"
                write_manifest(manifest, subset, "cal")
                out = tmp / f"cal_{n}_{seed}.safetensors"
                r = rechoose_operating_point(adapted, manifest, out, cache_dir=tmp / "cache")
                runs.append({"seed": seed, "n": len(subset), "calibration": _plain(r), "test": measure(out, site.test)})
            med = lambda key: float(np.median([run["test"][key]["value"] for run in runs]))  # noqa: E731
            ladder["adapt_and_calibrate"][str(n)] = {"median_sensitivity": med("sensitivity"),
                                                     "median_specificity": med("specificity"),
                                                     "median_ece": med("ece"), "runs": runs}
    doc = {"benchmark": "site_onboarding", "model": PACKAGED_MODEL.name, "ladder": ladder,
           "seconds": round(time.perf_counter() - t0, 1),
           "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "threads": args.threads,
                       "loadavg_1_5_15_before": load0, "loadavg_1_5_15_after": os.getloadavg()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, default=_plain) + "\n")
    _print(ladder)
    return 0


def _plain(obj):
    """JSON-safe copy (numpy scalars, dataclasses, NaN -> None)."""
    import dataclasses
    import math

    if dataclasses.is_dataclass(obj):
        return _plain(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return _plain(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj if isinstance(obj, (str, int, float, bool, type(None))) else str(obj)


def _print(ladder: dict) -> None:
    def line(name, m):
        s, p, e = m["sensitivity"], m["specificity"], m["ece"]
        print(f"{name:28s} sens {s['value']:.3f} [{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]  spec {p['value']:.3f} "
              f"[{p['ci'][0]:.3f}, {p['ci'][1]:.3f}]  ECE {e['value']:.3f}  AUC {m['auc']:.3f}  thr {m['threshold']:.3f}")
    line("out of the box", ladder["out_of_the_box"])
    print(f"{'drift on the pool':28s} shifted={ladder['drift_on_pool']['shifted']} "
          f"(statistic {ladder['drift_on_pool']['statistic']:.2f}, threshold {ladder['drift_on_pool']['threshold']:.2f})")
    line("after adapt", ladder["adapt"]["test"])
    for n, block in ladder["adapt_and_calibrate"].items():
        for run in block["runs"]:
            line(f"adapt + calibrate n={n} s{run['seed']}", run["test"])


if __name__ == "__main__":
    sys.exit(main())
