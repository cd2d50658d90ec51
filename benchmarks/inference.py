"""Inference speed of ``pneumoscan predict``'s path: ONNX Runtime (the default) against ``--backend torch``, with
decoding overlapped with the model and without, as ratios measured in one process (issue 18's targets).

Measured, each configuration a :class:`~pneumoscan.inference.predictor.Predictor` of the shipped model in a fresh process
(so that no backend's idle threads disturb another's), every configuration once per round, rounds interleaved (a
change in the background load hits all alike):

* ``small``: ``Predictor.score_files`` over N small images (the 224 x 224 training JPEGs; default 500), batch 64:
  images per second; target: the default >= 2x ``--backend torch``;
* ``fullres``: the same over the full-resolution films (``../shared/data/fullres_samples``, 40): images per second;
  target: >= 150 img/s batched;
* ``single``: one full-resolution film end to end (decode, resize, model, scope gate) with ``score_files([path])``,
  p50 and p95 in ms; target: p50 <= 15 ms;
* ``model_single``: the model call alone on one preprocessed image, p50 in ms;
* ``cli``: the wall time of ``pneumoscan predict ONE_FILM`` in a fresh process per backend (start-up included),
  and whether torch was imported.

Configurations: ``onnx`` (default: ONNX Runtime, overlap on, idle threads do not spin), ``onnx-no-overlap``,
``onnx-spin`` (ONNX Runtime's own default: idle intra-op threads spin), ``torch`` (overlap on), ``torch-no-overlap``; ``--threads`` sets both backends' intra-op threads (default: the library's).

The JSON (``benchmarks/results/inference.json``) keeps every round, the medians, the ratios, the load average
before and after, and the machine. This machine is shared: quote medians and compare ratios from one run.

``--decoders`` runs the decoder comparison instead (``benchmarks/decoders.py``: per-film decode + resize ms of
Pillow's draft, simplejpeg, OpenCV and PyTurboJPEG, the squares against today's, and ``score_files`` images/s with
each decoder and with decoding processes instead of threads; ``benchmarks/results/decoders.json``).

    python benchmarks/inference.py [--small-n 500] [--rounds 5] [--quick] [--out FILE]
    python benchmarks/inference.py --decoders [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CONFIGS = {
    "onnx": {"backend": "onnx", "overlap": True},
    "onnx-no-overlap": {"backend": "onnx", "overlap": False},
    "onnx-spin": {"backend": "onnx", "overlap": True, "spin": True},
    "torch": {"backend": "torch", "overlap": True},
    "torch-no-overlap": {"backend": "torch", "overlap": False},
}
TARGETS = {"small_default_over_torch": 2.0, "fullres_images_per_s": 150.0, "single_p50_ms": 15.0}


def _files(root: Path, n: int | None) -> list[str]:
    files = sorted(str(p) for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    if n is not None and len(files) > n:
        step = len(files) / n
        files = [files[int(i * step)] for i in range(n)]  # spread over the classes, not the first folder only
    return files


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _child(config: str, threads: int | None, small: list[str], films: list[str], batch: int,
           single_reps: int) -> dict[str, Any]:
    """One configuration in this (fresh) process: warm up, then small-image and full-resolution throughput
    (``score_files``, images per second), one film end to end and the model call alone (ms per call)."""
    import numpy as np

    from pneumoscan.inference.predictor import PACKAGED_MODEL, Predictor, RuntimeOptions

    p = Predictor.from_checkpoint(PACKAGED_MODEL, options=RuntimeOptions(threads=threads, **CONFIGS[config]))
    p.score_files(films[:batch], batch_size=batch)  # warm-up: session, pool, first allocations
    p.score_files(small[:batch], batch_size=batch)
    out: dict[str, Any] = {}
    for name, files in (("small", small), ("fullres", films)):
        t0 = time.perf_counter()
        results = p.score_files(files, batch_size=batch)
        out[name] = len(files) / (time.perf_counter() - t0)
        assert all(r.probability is not None for r in results), "a benchmark image could not be read"
    x = p.network.inputs([np.full((p.preprocessing.image_size,) * 2, 128, np.uint8)])
    e2e, model = [], []
    for i in range(single_reps):
        t0 = time.perf_counter()
        p.score_files([films[i % len(films)]], batch_size=1)
        t1 = time.perf_counter()
        p.network.runner(x)
        model.append(1e3 * (time.perf_counter() - t1))
        e2e.append(1e3 * (t1 - t0))
    out["single_e2e_ms"] = statistics.median(e2e)
    out["single_e2e_p95_ms"] = _pct(e2e, 0.95)
    out["model_single_ms"] = statistics.median(model)
    return out


def _rounds(args: argparse.Namespace, small: list[str], films: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Every configuration once per round, each in a fresh process (so that no backend's idle threads or
    allocations disturb another's), rounds interleaved."""
    job = {"threads": args.threads, "small": small, "films": films, "batch": args.batch_size,
           "single_reps": args.single_reps}
    per: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGS}
    for r in range(args.rounds):
        for name in CONFIGS:
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps({**job, "config": name})],
                                  capture_output=True, text=True, cwd=REPO, check=True)
            per[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}/{args.rounds} {name}: {per[name][-1]}", flush=True)
    return per


def _summaries(per: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    med = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in per.items()}
    return {
        "small": {"images_per_s": {n: round(m["small"], 1) for n, m in med.items()},
                  "rounds_images_per_s": {n: [round(r["small"], 1) for r in runs] for n, runs in per.items()}},
        "fullres": {"images_per_s": {n: round(m["fullres"], 1) for n, m in med.items()},
                    "rounds_images_per_s": {n: [round(r["fullres"], 1) for r in runs] for n, runs in per.items()}},
        "single": {"e2e_ms": {n: {"p50": round(m["single_e2e_ms"], 2), "p95": round(m["single_e2e_p95_ms"], 2)}
                              for n, m in med.items()},
                   "model_ms": {n: {"p50": round(m["model_single_ms"], 2)} for n, m in med.items()}},
    }


def _cli(film: str, reps: int) -> dict[str, Any]:
    """Wall time of ``pneumoscan predict FILM`` in a fresh process, per backend (start-up included)."""
    code = ("import sys, time; t = time.perf_counter(); from pneumoscan.cli import main; "
            "rc = main(sys.argv[1:]); print(rc, 'torch' in sys.modules, time.perf_counter() - t)")
    env = {k: v for k, v in os.environ.items() if k != "PNEUMOSCAN_MODEL"}
    out: dict[str, Any] = {}
    walls: dict[str, list[float]] = {"onnx": [], "torch": []}
    torch_loaded: dict[str, bool] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(reps):
            for backend in walls:
                args = ["predict", film, "--no-progress", "--backend", backend, "--overwrite", "--out",
                        str(Path(tmp) / f"{backend}{i}.json")]
                t0 = time.perf_counter()
                proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                                      cwd=REPO, check=True)
                walls[backend].append(time.perf_counter() - t0)
                torch_loaded[backend] = proc.stdout.split()[-2] == "True"
    for backend, v in walls.items():
        out[backend] = {"wall_s_median": round(statistics.median(v), 3), "rounds": [round(x, 3) for x in v],
                        "torch_imported": torch_loaded[backend]}
    return out


def _ratios(doc: dict[str, Any]) -> dict[str, Any]:
    small, full = doc["small"]["images_per_s"], doc["fullres"]["images_per_s"]
    single = doc["single"]["e2e_ms"]
    out = {
        "small_default_over_torch": round(small["onnx"] / small["torch"], 2),
        "small_overlap_gain_onnx": round(small["onnx"] / small["onnx-no-overlap"], 2),
        "fullres_default_over_torch": round(full["onnx"] / full["torch"], 2),
        "fullres_overlap_gain_onnx": round(full["onnx"] / full["onnx-no-overlap"], 2),
        "fullres_overlap_gain_torch": round(full["torch"] / full["torch-no-overlap"], 2),
        "fullres_no_spin_over_spin": round(full["onnx"] / full["onnx-spin"], 2),
        "small_no_spin_over_spin": round(small["onnx"] / small["onnx-spin"], 2),
        "single_e2e_torch_over_default": round(single["torch"]["p50"] / single["onnx"]["p50"], 2),
    }
    for task, a, b in (("small", "onnx", "torch"), ("fullres", "onnx", "torch"), ("small", "onnx", "onnx-no-overlap"),
                       ("fullres", "onnx", "onnx-no-overlap"), ("fullres", "onnx", "onnx-spin")):
        rounds = doc[task]["rounds_images_per_s"]
        out[f"{task}_{a}_over_{b}_per_round"] = [round(x / y, 2) for x, y in zip(rounds[a], rounds[b])]
    return out


def _targets(doc: dict[str, Any]) -> dict[str, Any]:
    r, full, single = doc["ratios"], doc["fullres"]["images_per_s"]["onnx"], doc["single"]["e2e_ms"]["onnx"]["p50"]
    return {
        "default >= 2x --backend torch on small images": {"value": r["small_default_over_torch"],
                                                            "met": r["small_default_over_torch"] >= 2.0},
        ">= 150 img/s batched on full-resolution films": {"value": full, "met": full >= 150.0},
        "single-image p50 <= 15 ms": {"value": single, "met": single <= 15.0},
        "no import torch on the default predict path": {"value": not doc["cli"]["onnx"]["torch_imported"],
                                                        "met": not doc["cli"]["onnx"]["torch_imported"]},
    }


def _decoders(args: argparse.Namespace) -> dict[str, Any]:
    """``benchmarks/decoders.py`` with this run's folders and rounds (its own defaults for the rest)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("decoders", Path(__file__).with_name("decoders.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = args.out if args.out.name != "inference.json" else args.out.with_name("decoders.json")
    return module.main(["--fullres", str(args.fullres), "--small", str(args.small), "--rounds", str(args.rounds
                        if not args.quick else 1), "--out", str(out)])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=Path, default=SHARED / "chest_xray_224", help="folder of small images")
    parser.add_argument("--small-n", type=int, default=500)
    parser.add_argument("--fullres", type=Path, default=Path(os.environ.get("PNEUMOSCAN_SAMPLES", "")
                                                             or SHARED / "fullres_samples"))
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds of every configuration")
    parser.add_argument("--single-reps", type=int, default=60)
    parser.add_argument("--cli-reps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (predict's default)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads, both backends")
    parser.add_argument("--quick", action="store_true", help="a short run: 2 rounds, 20 single reps, 1 CLI rep")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "inference.json")
    parser.add_argument("--decoders", action="store_true", help="compare JPEG decoders instead (benchmarks/decoders.py)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.decoders:
        return _decoders(args)
    if args.child:
        job = json.loads(args.child)
        print(json.dumps(_child(job["config"], job["threads"], job["small"], job["films"], job["batch"],
                                job["single_reps"])))
        return {}
    if args.quick:
        args.rounds, args.single_reps, args.cli_reps = 2, 20, 1
    for folder in (args.small, args.fullres):
        if not folder.is_dir():
            parser.error(f"{folder} not found (see ../shared/data/README.md)")
    import onnxruntime
    import torch

    from pneumoscan import __version__
    from pneumoscan.utils import atomic_write_text

    small, films = _files(args.small, args.small_n), _files(args.fullres, None)
    started, load_before = time.time(), os.getloadavg()
    doc: dict[str, Any] = {"benchmark": "inference", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    doc.update(_summaries(_rounds(args, small, films)))
    doc["cli"] = _cli(films[0], args.cli_reps)
    doc["ratios"] = _ratios(doc)
    doc["targets"] = _targets(doc)
    doc["machine"] = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                      "torch": torch.__version__, "onnxruntime": onnxruntime.__version__, "pneumoscan": __version__,
                      "torch_threads": torch.get_num_threads(), "loadavg_1_5_15_before": load_before,
                      "loadavg_1_5_15_after": os.getloadavg()}
    doc["settings"] = {"configs": CONFIGS, "rounds": args.rounds, "threads": args.threads,
                       "single_reps": args.single_reps, "batch_size": args.batch_size,
                       "small": f"{len(small)} images from {args.small}", "fullres": f"{len(films)} films from "
                       f"{args.fullres}", "seconds": round(time.time() - started, 1)}
    doc["note"] = ("Every configuration is the shipped model in a fresh process per round, rounds interleaved; "
                   "medians over rounds. Quote ratios from one run: this machine is shared (see the load average).")
    atomic_write_text(args.out, json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: doc[k] for k in ("ratios", "targets")}, indent=1))
    print(f"small img/s {doc['small']['images_per_s']}; fullres img/s {doc['fullres']['images_per_s']}; single "
          f"{doc['single']['e2e_ms']}; cli {doc['cli']}; load {load_before} -> {os.getloadavg()}; wrote {args.out}")
    return doc


if __name__ == "__main__":
    main()
    sys.exit(0)
