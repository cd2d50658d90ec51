"""The three rungs at a simulated new site, at each labelled budget (issue 26, item 6): out of the box; ``adapt`` (no
labels); ``adapt`` + ``calibrate`` on the budget's films; fine-tuning (``train --init-from`` the shipped model) on
the budget's films, with its own patient-level validation split inside the budget.

The site (``tests/sitefactory.py``) is the shipped model's own validation split (575 films of 285 patients: the
only films of ``chest_xray_224`` it never trained on; checked here against its ``trainset.train`` hashes) passed
through another acquisition chain, its patients split in halves (``build_site(test_fraction=0.5)``): the
lower-numbered (earlier) half is the pool the site labels and adapts on (355 films of 143 patients), the later
half the future every rung is measured on (220 films of 142 patients). So the budgets are 100, 200 and the whole
pool, 355: 400 labelled films plus a future half do not exist among the films the shipped model never trained on.

Measured on the future half: AUC with a 95 % patient-bootstrap interval, sensitivity and specificity at the
threshold each rung writes in its checkpoint (the sensitivity-first rule: lowest cost at sensitivity >= 0.95),
with patient-bootstrap intervals, and the wall time of each rung on this machine. Each budget is repeated with
``--repeats`` seeds (another labelled subset, another fine-tuning split); medians are reported with every run.

    nice -n 10 python benchmarks/finetune_rungs.py --out benchmarks/results/finetune_rungs.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
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
from pneumoscan.checkpoint import load_checkpoint  # noqa: E402
from pneumoscan.data import index_dataset, split_index, write_manifest  # noqa: E402
from pneumoscan.inference.predictor import PACKAGED_MODEL, Predictor  # noqa: E402
from pneumoscan.onboarding.trainset import hash_files  # noqa: E402
from pneumoscan.utils import atomic_write_text  # noqa: E402

#: The onboarding code measured (another change may be under way; the digests say which version ran).
WATCHED = ["src/pneumoscan/onboarding/site.py", "src/pneumoscan/onboarding/adabn.py",
           "src/pneumoscan/onboarding/operating_point.py", "src/pneumoscan/training/finetune.py",
           "src/pneumoscan/training/loop.py"]


def digests() -> dict[str, str]:
    root = HERE.parent
    return {p: hashlib.sha256((root / p).read_bytes()).hexdigest()[:16] for p in WATCHED if (root / p).is_file()}


def measure(model: Path, future, *, n_boot: int = 1000) -> dict:
    """AUC, sensitivity and specificity (at the model's stored threshold) on the future half, with 95 % patient
    bootstrap intervals."""
    p = Predictor.from_checkpoint(model, backend="torch")
    results = p.score_files([r.path for r in future], batch_size=32)
    y = np.array([r.label for r in future])
    probs = np.array([r.probability for r in results], dtype=np.float64)
    groups = [r.patient_id for r in future]
    ci = M.bootstrap_ci(y, probs, {"operating": p.threshold}, groups=groups, n_resamples=n_boot, seed=0)
    op = ci["thresholds"]["operating"]
    return {"threshold": p.threshold, "temperature": p.temperature, "n": int(y.size), "n_pos": int(y.sum()),
            "n_out_of_scope": int(sum(not r.in_scope for r in results)),
            "auc": {"value": M.roc_auc(y, probs), "ci": ci["roc_auc"]},
            "sensitivity": {"value": M.sensitivity(y, probs, p.threshold), "ci": op["sensitivity"]},
            "specificity": {"value": M.specificity(y, probs, p.threshold), "ci": op["specificity"]}}


def check_never_trained_on(data: str) -> dict:
    """The site's source films (the shipped model's validation split) against its training-film hashes."""
    ckpt = load_checkpoint(PACKAGED_MODEL)
    _, val = split_index(index_dataset(data, split="train", check=False), 0.1, 42)
    hashes = hash_files([r.path for r in val.records])
    trained = set(ckpt.extra["trainset.train"].tolist())
    known_val = set(ckpt.extra["trainset.val"].tolist())
    return {"n_source_films": len(hashes), "n_in_shipped_training": sum(h in trained for h in hashes),
            "n_in_shipped_validation": sum(h in known_val for h in hashes)}


def fine_tune(labelled, tmp: Path, name: str, seed: int, threads: int, epochs: int) -> tuple[Path, dict]:
    from pneumoscan.training import train
    from pneumoscan.training.finetune import finetune_config

    manifest = tmp / f"{name}.csv"
    write_manifest(manifest, labelled, "site")
    cfg = finetune_config(PACKAGED_MODEL, [f"data.root={json.dumps(str(manifest))}",
                                           f"data.cache_dir={json.dumps(str(tmp / 'cache'))}",
                                           f"data.split_seed={42 + seed}", f"train.seed={seed}",
                                           f"train.threads={threads}", f"train.epochs={epochs}", "train.device='cpu'"])
    t0 = time.perf_counter()
    result = train(cfg, tmp / name, progress=False)
    seconds = time.perf_counter() - t0
    meta = load_checkpoint(result.best_checkpoint).meta
    return result.best_checkpoint, {
        "seconds": round(seconds, 1), "epochs_run": result.epochs_run, "best_epoch": result.best_epoch,
        "site_val_auc": result.best_val_auc, "n_train": meta["fine_tuning"]["n_train_images"],
        "n_val": meta["fine_tuning"]["n_val_images"], "lr": cfg.train.lr, "batch_size": cfg.train.batch_size,
        "operating_point": meta["operating_point"], "temperature": meta["calibration"]["temperature"],
        "reference": {k: meta.get("reference", {}).get(k) for k in ("kind", "n_bank", "n_val")}}


def main(argv: list[str] | None = None) -> int:
    from pneumoscan.onboarding.operating_point import rechoose_operating_point
    from pneumoscan.onboarding.site import adapt

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_data = os.environ.get("PNEUMOSCAN_DATA") or str(HERE.parents[1] / "shared" / "data" / "chest_xray_224")
    parser.add_argument("--data", default=default_data)
    parser.add_argument("--budgets", type=int, nargs="+", default=[100, 200, 0], help="0: the whole pool")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "finetune_rungs.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    t0, load0, code0 = time.perf_counter(), os.getloadavg(), digests()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        site = build_site(args.data, tmp / "site", test_fraction=0.5)
        # The patient numbers follow time: the site labels its earlier half and meets the later half.
        pool, future = site.test, site.pool
        doc: dict = {"benchmark": "finetune_rungs", "site": SITE, "source": check_never_trained_on(args.data),
                     "n_pool": len(pool), "pool_pneumonia": sum(r.label for r in pool),
                     "n_pool_patients": len({r.patient_id for r in pool}),
                     "n_future": len(future), "future_pneumonia": sum(r.label for r in future),
                     "n_future_patients": len({r.patient_id for r in future})}
        print(f"site: pool {len(pool)} films, future {len(future)} films", flush=True)
        doc["out_of_the_box"] = measure(PACKAGED_MODEL, future)
        adapted = tmp / "adapted.safetensors"
        t = time.perf_counter()
        adapt(PACKAGED_MODEL, [r.path for r in pool], adapted)
        doc["adapt"] = {"seconds": round(time.perf_counter() - t, 1), "n_films": len(pool),
                        "future": measure(adapted, future)}
        _line("out of the box", doc["out_of_the_box"])
        _line("adapt", doc["adapt"]["future"])
        doc["budgets"] = {}
        for n in args.budgets:
            budget = n or len(pool)
            runs = []
            for seed in range(args.repeats):
                labelled = list(pool) if budget >= len(pool) else labelled_subset(pool, budget, seed=seed)
                manifest = tmp / f"cal_{budget}_{seed}.csv"
                write_manifest(manifest, labelled, "cal")
                cal = tmp / f"cal_{budget}_{seed}.safetensors"
                t = time.perf_counter()
                r = rechoose_operating_point(adapted, manifest, cal, cache_dir=tmp / "cache")
                cal_s = time.perf_counter() - t
                ft, ft_info = fine_tune(labelled, tmp, f"ft_{budget}_{seed}", seed, args.threads, args.epochs)
                run = {"seed": seed, "n": len(labelled), "n_pneumonia": sum(x.label for x in labelled),
                       "adapt_calibrate": {"seconds_calibrate": round(cal_s, 1),
                                           "threshold": r["after"]["threshold"],
                                           "temperature": r["site_calibration"]["temperature"],
                                           "future": measure(cal, future)},
                       "fine_tune": {**ft_info, "future": measure(ft, future)}}
                runs.append(run)
                _line(f"adapt+calibrate n={len(labelled)} s{seed}", run["adapt_calibrate"]["future"])
                _line(f"fine-tune n={len(labelled)} s{seed} ({ft_info['seconds']:.0f} s)", run["fine_tune"]["future"])
            doc["budgets"][str(budget)] = {"runs": runs, "median": {
                rung: {k: float(np.median([run[rung]["future"][k]["value"] for run in runs]))
                       for k in ("auc", "sensitivity", "specificity")}
                | ({"seconds": float(np.median([run[rung]["seconds"] for run in runs]))} if rung == "fine_tune" else
                   {"seconds_calibrate": float(np.median([run[rung]["seconds_calibrate"] for run in runs]))})
                for rung in ("adapt_calibrate", "fine_tune")}}
    code1 = digests()
    doc.update({"measured_code": code0, "code_changed_during_run": sorted(k for k in code0 if code0[k] != code1.get(k)),
                "seconds": round(time.perf_counter() - t0, 1),
                "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                            "threads": args.threads, "nice": os.nice(0),
                            "loadavg_1_5_15_before": load0, "loadavg_1_5_15_after": os.getloadavg()},
                "settings": {"budgets": args.budgets, "repeats": args.repeats, "epochs": args.epochs,
                             "backend_measured": "torch"}})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(_plain(doc), indent=2) + "\n")
    print(f"wrote {args.out} in {doc['seconds']:.0f} s")
    return 0


def _line(name: str, m: dict) -> None:
    a, s, p = m["auc"], m["sensitivity"], m["specificity"]
    print(f"{name:40s} AUC {a['value']:.4f} [{a['ci'][0]:.3f}, {a['ci'][1]:.3f}]  sens {s['value']:.3f} "
          f"[{s['ci'][0]:.3f}, {s['ci'][1]:.3f}]  spec {p['value']:.3f} [{p['ci'][0]:.3f}, {p['ci'][1]:.3f}]  "
          f"thr {m['threshold']:.4f}", flush=True)


def _plain(obj):
    """JSON-safe copy (numpy scalars, NaN -> None)."""
    import math

    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return _plain(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj if isinstance(obj, (str, int, float, bool, type(None))) else str(obj)


if __name__ == "__main__":
    sys.exit(main())
