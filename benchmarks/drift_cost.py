"""What the drift check costs ``pneumoscan predict``, and what its precomputed null changes (issue #27).

Three parts, each its own key in the JSON (``benchmarks/results/drift_cost.json``):

* ``timing``: :func:`pneumoscan.worklist.job.predict_job` (what ``pneumoscan predict FOLDER`` runs) on ``--n``
  small films (the 224 px training JPEGs of ``--data``, spread over its classes), each run in a fresh process, with
  the default backend (ONNX Runtime) and ``--backend torch``, in these drift modes:

  - ``head``: the drift check of the git commit ``--before`` (default ``HEAD``), loaded from git, as before this
    change (skipped outside a git checkout);
  - ``no_table_cold``: this code with the model's null table removed and an empty null cache (what a model
    without a table pays on its first run);
  - ``no_table_warm``: the same with the cache the cold run left (its later runs);
  - ``table``: this code as shipped (the null looked up in the model's table).

  Reported: the wall time of the job, the time inside the drift step (``batch_drift``: building the check and
  testing the batch), its share, and the torch/ONNX ratio of the job's time; medians over ``--rounds`` rounds,
  every configuration once per round (rounds interleaved, so a change in the background load hits all alike),
  with the load average; also the ratio of the fastest runs (the least disturbed on a shared machine).

* ``interpolation``: the table's values at batch sizes between its stored ones against the null computed there
  directly, and, as the yardstick, the direct null under ``--seeds`` other resampling seeds: ``|table - direct|``
  against ``|direct(seed) - direct(other seed)|`` (relative, for the two scales and the threshold).

* ``monitor``: the server's rolling window (:class:`pneumoscan.serve.monitor.DriftWindow`, 200 images) filled
  with validation films one by one: the time to build the check (at server start) and of each report as the window
  fills (50, 100, 150, 200), with the table and without (no cache), medians over ``--rounds``.

* ``verdicts``: batches of off-grid sizes drawn from the scored film sets of ``benchmarks/drift_power.py`` (the
  validation films and unseen training films, as they are and through the acquisition shifts of
  ``tests/sitefactory.py``), at 20, 50 and 77% pneumonia, tested with the table and with the direct null (seed 0
  and seed 1): the share called shifted by each, and how often the table's verdict differs from the direct one,
  against how often two seeds of the direct null differ (the resampling error). Needs drift_power's cache of
  scored films (``--power-cache``; it is made, slowly, when missing).

    python benchmarks/drift_cost.py [--parts timing,interpolation,monitor,verdicts] [--n 500] [--rounds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DATA = Path(os.environ.get("PNEUMOSCAN_DATA", REPO.parent / "shared" / "data" / "chest_xray_224"))
MODES = ("head", "no_table_cold", "no_table_warm", "table")
BACKENDS = ("onnx", "torch")
#: Batch sizes between the table's stored ones (pneumoscan.gate.drift_null.NULL_SIZES).
OFF_GRID = (55, 65, 75, 85, 95, 112, 137, 163, 188, 225, 275, 325, 375, 425, 475, 499)
VERDICT_SIZES = (75, 137, 263, 420, 499)
VERDICT_MIXES = (0.2, 0.5, 0.77)

_CHILD = r"""
import json, os, subprocess, sys, time, importlib.util
from pathlib import Path
folder, model, backend, mode, before = sys.argv[1:6]
import pneumoscan.worklist.job as job
import pneumoscan.inference.predictor as predictor_mod
if mode == "head":
    src = subprocess.run(["git", "show", f"{before}:src/pneumoscan/gate/drift.py"], capture_output=True, text=True,
                         check=True, cwd=sys.argv[6]).stdout
    spec = importlib.util.spec_from_loader("drift_before", loader=None)
    old = importlib.util.module_from_spec(spec)
    sys.modules["drift_before"] = old
    exec(compile(src, "drift_before", "exec"), old.__dict__)
    predictor_mod.DriftCheck = lambda ref, cache_dir=None, **kw: old.DriftCheck(ref, **kw)
if mode.startswith("no_table"):
    real = predictor_mod.DriftCheck
    def no_table(ref, **kw):
        import dataclasses
        return real(dataclasses.replace(ref, drift_null=None), **kw)
    predictor_mod.DriftCheck = no_table
spent = []
inner = job.batch_drift
def timed(*a, **k):
    t = time.perf_counter()
    try:
        return inner(*a, **k)
    finally:
        spent.append(time.perf_counter() - t)
job.batch_drift = timed
t0 = time.perf_counter()
report = job.predict_job(job.PredictRequest(paths=[Path(folder)], model=Path(model), backend=backend))
total = time.perf_counter() - t0
d = report.drift
print(json.dumps({"total_s": total, "drift_s": sum(spent), "n_in_scope": report.counts["n_in_scope"],
                  "drift": None if d is None else {"shifted": d.shifted, "statistic": d.statistic,
                                                   "threshold": d.threshold, "n_used": d.n_used,
                                                   "estimated_mix": d.estimated_mix},
                  "torch_loaded": "torch" in sys.modules}))
"""


def _films(n: int) -> list[Path]:
    files = sorted(p for p in DATA.rglob("*") if p.is_file() and p.suffix.lower() in (".jpeg", ".jpg", ".png"))
    if len(files) < n:
        raise SystemExit(f"{DATA} holds {len(files)} images, fewer than --n {n}")
    step = len(files) / n
    return [files[int(i * step)] for i in range(n)]  # spread over the classes, not the first folder only


def _med(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def timing(model: Path, n: int, rounds: int, before: str) -> dict[str, Any]:
    have_git = subprocess.run(["git", "cat-file", "-e", f"{before}:src/pneumoscan/gate/drift.py"], cwd=REPO,
                              capture_output=True).returncode == 0
    modes = [m for m in MODES if m != "head" or have_git]
    runs: dict[str, list[dict[str, Any]]] = {f"{b}/{m}": [] for b in BACKENDS for m in modes}
    load = [os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="drift-cost-") as tmp:
        folder = Path(tmp) / "films"
        folder.mkdir()
        for i, f in enumerate(_films(n)):
            os.symlink(f.resolve(), folder / f"{i:04d}{f.suffix.lower()}")
        for r in range(rounds):
            for backend in BACKENDS:
                cache = Path(tmp) / f"cache-{r}-{backend}"  # cold for no_table_cold, then warm
                for mode in modes:
                    env = {**os.environ, "PNEUMOSCAN_ONNX_CACHE": str(cache)}
                    out = subprocess.run([sys.executable, "-c", _CHILD, str(folder), str(model), backend, mode,
                                          before, str(REPO)], capture_output=True, text=True, env=env, cwd=REPO)
                    if out.returncode:
                        raise SystemExit(f"{backend}/{mode} failed:\n{out.stderr[-3000:]}")
                    res = json.loads(out.stdout.strip().splitlines()[-1])
                    runs[f"{backend}/{mode}"].append(res)
                    print(f"round {r} {backend:5s} {mode:14s} total {res['total_s']:6.2f} s, drift "
                          f"{res['drift_s']:5.2f} s ({res['drift_s'] / res['total_s']:.1%})", flush=True)
            load.append(os.getloadavg())
    summary: dict[str, Any] = {}
    for key, rs in runs.items():
        total, drift = _med([x["total_s"] for x in rs]), _med([x["drift_s"] for x in rs])
        summary[key] = {"total_s": total, "drift_s": drift, "drift_share": _med([x["drift_s"] / x["total_s"]
                                                                                 for x in rs]),
                        "rest_s": _med([x["total_s"] - x["drift_s"] for x in rs]),
                        "total_s_min": min(x["total_s"] for x in rs)}
    ratios = {m: summary[f"torch/{m}"]["total_s"] / summary[f"onnx/{m}"]["total_s"] for m in modes}
    # On a shared machine the fastest run is the one least disturbed by others: the ratio of the minima too.
    ratios_min = {m: summary[f"torch/{m}"]["total_s_min"] / summary[f"onnx/{m}"]["total_s_min"] for m in modes}
    verdicts = {key: [x["drift"] for x in rs] for key, rs in runs.items()}
    return {"n_films": n, "rounds": rounds, "modes": modes, "before": before if have_git else None,
            "median": summary, "torch_over_onnx": ratios, "torch_over_onnx_of_minima": ratios_min, "runs": runs, "verdicts": verdicts,
            "loadavg_1_5_15_per_round": load,
            "targets": {"drift_share_max": 0.10, "torch_over_onnx_min": 2.0},
            "met": {"drift_share": summary["onnx/table"]["drift_share"] <= 0.10,
                    "torch_over_onnx": ratios["table"] >= 2.0,
                    "torch_over_onnx_of_minima": ratios_min["table"] >= 2.0}}


def _checks(model: Path) -> tuple[Any, Any]:
    """The shipped check (its table) and the same reference without a table, no cache."""
    from pneumoscan.checkpoint import load_checkpoint_arrays
    from pneumoscan.gate.drift import DriftCheck
    from pneumoscan.gate.reference import reference_of

    ref = reference_of(load_checkpoint_arrays(model))
    if ref is None or ref.drift_null is None:
        raise SystemExit(f"{model}: no drift null table (scripts/build_reference.py --null-only)")
    table = DriftCheck(ref)
    if table.table is None:
        raise SystemExit(f"{model}: its drift null table names another reference or other parameters")
    return table, ref


def interpolation(model: Path, seeds: int) -> dict[str, Any]:
    from pneumoscan.gate.drift import DriftCheck

    table, ref = _checks(model)
    bare = dataclasses.replace(ref, drift_null=None)
    direct = [DriftCheck(bare, seed=s) for s in range(seeds + 1)]
    for d in direct[1:]:  # the same kernel sums: only the resampling seed differs
        d._feat, d._int = direct[0]._feat, direct[0]._int
    grids = range(table.table.values.shape[2])
    rel_table, rel_seed = [], []
    rows = []
    for n in OFF_GRID:
        if n > table.max_batch:
            continue
        for g in grids:
            t = np.array(table.null(n, g))
            d = np.array([c.compute_null(n, g, True) for c in direct])
            e_table = np.abs(t - d[0]) / d[0]
            e_seed = np.abs(d[1:] - d[0]) / d[0]
            rel_table.append(e_table)
            rel_seed.extend(e_seed)
            rows.append({"n": n, "grid_mix": round(g * 0.05, 2), "table": t.tolist(), "direct": d[0].tolist(),
                         "other_seeds_sd": d[1:].std(0, ddof=1).tolist()})
    rt, rs = np.array(rel_table), np.array(rel_seed)
    names = ("scale_features", "scale_intensity", "threshold")
    out = {"sizes": [n for n in OFF_GRID if n <= table.max_batch], "grid_mixes": len(grids), "seeds": seeds,
           "median_rel_error": {"table_vs_direct": dict(zip(names, np.median(rt, 0).tolist())),
                                "seed_vs_seed": dict(zip(names, np.median(rs, 0).tolist()))},
           "p90_rel_error": {"table_vs_direct": dict(zip(names, np.quantile(rt, 0.9, axis=0).tolist())),
                             "seed_vs_seed": dict(zip(names, np.quantile(rs, 0.9, axis=0).tolist()))},
           "rows": rows}
    for k, v in out["median_rel_error"].items():
        print(f"median relative difference, {k:16s}: " + ", ".join(f"{n} {x:.4f}" for n, x in v.items()))
    return out


def monitor(model: Path, rounds: int) -> dict[str, Any]:
    from pneumoscan.gate.drift import DriftCheck
    from pneumoscan.result import ModelIdentity, Result
    from pneumoscan.serve.monitor import DriftWindow

    _, ref = _checks(model)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(ref.val_features))[:200]
    identity = ModelIdentity("bench", "bench", 0.5)
    results = [Result.scored(f"film{i}", 0.9, identity, features=ref.val_features[i], descriptor=ref.val_descriptors[i])
               for i in order]
    out: dict[str, Any] = {}
    for mode in ("table", "no_table"):
        times: dict[str, list[float]] = {"build": []}
        for _ in range(rounds):
            t = time.perf_counter()
            check = DriftCheck(ref if mode == "table" else dataclasses.replace(ref, drift_null=None))
            times["build"].append(time.perf_counter() - t)
            window = DriftWindow(check, 200)
            for i, r in enumerate(results, 1):
                window.record(r)
                if i % 50 == 0:
                    t = time.perf_counter()
                    report = window.report()
                    times.setdefault(f"report_{i}", []).append(time.perf_counter() - t)
                    assert report["available"], report
        out[mode] = {k: _med(v) for k, v in times.items()}
        print(f"monitor {mode:8s} " + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in out[mode].items()), flush=True)
    return out


def verdicts(model: Path, power_cache: Path, batches: int, seed: int) -> dict[str, Any]:
    sys.path.insert(0, str(HERE))
    import drift_power

    from pneumoscan.gate.drift import DriftCheck
    from pneumoscan.inference.predictor import Predictor

    table, ref = _checks(model)
    bare = dataclasses.replace(ref, drift_null=None)
    checks = {"table": table, "direct": DriftCheck(bare), "direct_seed1": DriftCheck(bare, seed=1)}
    sets = drift_power.film_sets(model, DATA, 300, 0)
    tag = __import__("hashlib").sha256((drift_power.weights_sha256(model) + "300" + "0").encode()).hexdigest()
    power_cache.mkdir(parents=True, exist_ok=True, mode=0o700)
    predictor = None
    cells: dict[str, Any] = {}
    flips = {"table_vs_direct": 0, "seed1_vs_direct": 0, "n": 0}
    for name, (paths, y) in sets.items():
        for how in drift_power.SHIFTS:
            path = power_cache / f"{tag}-{name}-{how}.npz"
            if path.is_file():
                scored = dict(np.load(path))
            else:
                predictor = predictor or Predictor.from_checkpoint(model)
                scored = drift_power.score(predictor, paths, how)
                np.savez(path, **scored)
            inside = scored["in_scope"]
            pools = {k: c.pool(scored["features"], scored["descriptors"]) for k, c in checks.items()}
            pos, neg = np.flatnonzero((y == 1) & inside), np.flatnonzero((y == 0) & inside)
            rng = np.random.default_rng(seed)
            for n in VERDICT_SIZES:
                for mix in VERDICT_MIXES:
                    k = int(round(n * mix))
                    if k > len(pos) or n - k > len(neg) or n > table.max_batch:
                        continue
                    calls = {m: [] for m in checks}
                    for _ in range(batches):
                        rows = np.concatenate([rng.choice(pos, k, replace=False), rng.choice(neg, n - k,
                                                                                              replace=False)])
                        for m, test in pools.items():
                            calls[m].append(test(rows).shifted)
                    c = {m: np.array(v) for m, v in calls.items()}
                    cell = {f"shifted_{m}": float(v.mean()) for m, v in c.items()}
                    cell["differ_table_vs_direct"] = int((c["table"] != c["direct"]).sum())
                    cell["differ_seed1_vs_direct"] = int((c["direct_seed1"] != c["direct"]).sum())
                    flips["table_vs_direct"] += cell["differ_table_vs_direct"]
                    flips["seed1_vs_direct"] += cell["differ_seed1_vs_direct"]
                    flips["n"] += batches
                    cells[f"{name}/{how}/{n}/{round(100 * mix)}"] = cell
            print(f"{name:10s} {how:15s} so far: table differs from direct on {flips['table_vs_direct']} of "
                  f"{flips['n']} batches, seed 1 on {flips['seed1_vs_direct']}", flush=True)
    return {"sizes": list(VERDICT_SIZES), "mixes": list(VERDICT_MIXES), "batches_per_cell": batches,
            "differ": {**flips, "table_vs_direct_rate": flips["table_vs_direct"] / max(flips["n"], 1),
                       "seed1_vs_direct_rate": flips["seed1_vs_direct"] / max(flips["n"], 1)},
            "cells": cells}


def main(argv: list[str] | None = None) -> int:
    from pneumoscan.inference.predictor import PACKAGED_MODEL
    from pneumoscan.utils import atomic_write_text

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=PACKAGED_MODEL)
    parser.add_argument("--parts", default="timing,interpolation,monitor,verdicts")
    parser.add_argument("--n", type=int, default=500, help="films for the timing part")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", default="HEAD", help="git commit whose drift check is the 'head' mode")
    parser.add_argument("--seeds", type=int, default=4, help="other resampling seeds (interpolation part)")
    parser.add_argument("--batches", type=int, default=40, help="batches per cell (verdicts part)")
    parser.add_argument("--power-cache", type=Path, default=Path("/tmp/pneumoscan-drift-power"))
    parser.add_argument("--out", type=Path, default=HERE / "results" / "drift_cost.json")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(parts) - {"timing", "interpolation", "monitor", "verdicts"}
    if unknown:
        parser.error(f"unknown part(s) {sorted(unknown)}")
    doc: dict[str, Any] = json.loads(args.out.read_text()) if args.out.is_file() else {}
    doc.update({"benchmark": "drift_cost", "model": str(args.model), "cpus": os.cpu_count()})
    t0 = time.perf_counter()
    for part in parts:
        load = os.getloadavg()
        if part == "timing":
            doc[part] = timing(args.model, args.n, args.rounds, args.before)
        elif part == "interpolation":
            doc[part] = interpolation(args.model, args.seeds)
        elif part == "monitor":
            doc[part] = monitor(args.model, args.rounds)
        else:
            doc[part] = verdicts(args.model, args.power_cache, args.batches, 0)
        doc[part]["loadavg_before"], doc[part]["loadavg_after"] = load, os.getloadavg()
        doc[part]["measured"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_text(args.out, json.dumps(doc, indent=2) + "\n")
    if "timing" in doc:
        t = doc["timing"]
        for m in t["modes"]:
            on, to = t["median"][f"onnx/{m}"], t["median"][f"torch/{m}"]
            print(f"{m:14s} onnx {on['total_s']:.2f} s (drift {on['drift_share']:.1%}), torch {to['total_s']:.2f} s "
                  f"(drift {to['drift_share']:.1%}); torch/onnx {t['torch_over_onnx'][m]:.2f} (of the fastest runs "
                  f"{t['torch_over_onnx_of_minima'][m]:.2f})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
