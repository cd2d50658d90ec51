"""Archive scoring on Ray (``pneumoscan predict --engine ray``) against the default ``predict``, on this machine, and
what each stage costs per film: the numbers behind the estimate for 10 million films on N nodes (README).

Measured with the shipped model, each engine in a fresh process per round, rounds interleaved (a change in the
background load hits both alike):

* ``default``: :func:`pneumoscan.worklist.job.predict_job` (all cores, decoding overlapped with the model);
* ``ray``: :func:`pneumoscan.scale.archive_job` on a local Ray instance (one actor per core, one ONNX Runtime thread
  each), a fresh run folder each round: ``ray_init_s`` (starting Ray, once per process), ``wall_s`` (the job:
  listing, actor start-up, scoring, shards, drift, summary) and ``scoring_s``; then ``resume_s``, the same command
  again on the finished run (every file found scored: listing and ``stat`` only);

on ``small`` (N 224 px training JPEGs, default 3000) and ``fullres`` (the 40 full-resolution films, copied
``--fullres-copies`` times: 200 films), copied into a temporary folder. ``stages`` times each stage alone on one
thread (in this process, median of ``--rounds`` passes): listing (per file), reading and hashing, decoding to the
model's square, model and gate (batches of 64); also on 16-bit DICOM copies of the full-resolution films (what a
PACS archive holds). ``driver`` times the shard writer
(rows committed per second). The JSON (``benchmarks/results/archive_scale.json``) keeps every round, the medians,
the load average before and after, the machine, and the estimate for 10 million films (:func:`estimate`).

    python benchmarks/archive_scale.py [--small-n 3000] [--fullres-copies 5] [--rounds 2] [--out FILE]
    python benchmarks/archive_scale.py --estimate-only      # the estimate again, from the saved measurements
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SETS = ("small", "fullres")


def _child(job: dict[str, Any]) -> dict[str, Any]:
    """One engine over every set, in this (fresh) process."""
    import logging

    out: dict[str, Any] = {}
    if job["engine"] == "default":
        from pneumoscan.worklist.job import PredictRequest, predict_job

        for name in SETS:
            t0 = time.perf_counter()
            report = predict_job(PredictRequest(paths=[Path(job["folders"][name])], progress=False))
            out[name] = {"wall_s": time.perf_counter() - t0, "n": report.counts["n_files"]}
        return out
    import ray

    from pneumoscan.scale import ArchiveRequest, archive_job

    t0 = time.perf_counter()
    ray.init(include_dashboard=False, logging_level=logging.WARNING)
    out["ray_init_s"] = time.perf_counter() - t0
    for name in SETS:
        run_dir = Path(job["tmp"]) / f"run-{name}-{job['round']}"
        req = ArchiveRequest(paths=[Path(job["folders"][name])], run_dir=run_dir, batch_size=64)
        t0 = time.perf_counter()
        report = archive_job(req)
        wall = time.perf_counter() - t0
        t0 = time.perf_counter()
        again = archive_job(req)
        out[name] = {"wall_s": wall, "n": report.counts["n_files"], "scoring_s": report.seconds["scoring"],
                     "listing_s": report.seconds["listing"], "finishing_s": report.seconds["finishing"],
                     "actors": report.n_actors, "stage_seconds": report.stage_seconds,
                     "resume_s": time.perf_counter() - t0, "resume_skipped": again.n_done,
                     "resume_scored": again.n_scored}
    ray.shutdown()
    return out


def _rounds(args: argparse.Namespace, folders: dict[str, str], tmp: str) -> dict[str, list[dict[str, Any]]]:
    per: dict[str, list[dict[str, Any]]] = {"default": [], "ray": []}
    for r in range(args.rounds):
        for engine in ("default", "ray") if r % 2 == 0 else ("ray", "default"):
            job = {"engine": engine, "folders": folders, "tmp": tmp, "round": r}
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True,
                                  text=True, timeout=1800, cwd=REPO)
            if proc.returncode != 0:
                raise RuntimeError(f"{engine} failed:\n{proc.stderr[-3000:]}")
            per[engine].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"round {r} {engine}: {per[engine][-1]}", file=sys.stderr)
    return per


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _stages(folders: dict[str, str], dicom_dir: str, rounds: int) -> dict[str, Any]:
    """Per-film cost of each stage alone, on one thread: ms per film (listing: µs per file)."""
    import numpy as np

    from pneumoscan.inference.files import decode_item
    from pneumoscan.inference.predictor import Predictor, RuntimeOptions, default_model_path
    from pneumoscan.scale.listing import Listing, iter_paths, pending_blocks
    from pneumoscan.scale.scorer import read_file

    predictor = Predictor.from_checkpoint(default_model_path(), options=RuntimeOptions(threads=1, decode_workers=0))
    spec = predictor.preprocessing
    out: dict[str, Any] = {}
    for name, folder in {**folders, "dicom": dicom_dir}.items():
        times: dict[str, list[float]] = {"listing_us": [], "read_hash_ms": [], "decode_ms": [], "model_gate_ms": []}
        sizes = []
        for _ in range(rounds):
            listing = Listing()
            t0 = time.perf_counter()
            paths = [p for b in pending_blocks(iter_paths([folder], [], recursive=False, listing=listing), listing,
                                               block_rows=256) for p in b["path"].to_pylist()]
            times["listing_us"].append((time.perf_counter() - t0) / len(paths) * 1e6)
            t0 = time.perf_counter()
            reads = [read_file(p) for p in paths]
            times["read_hash_ms"].append((time.perf_counter() - t0) / len(paths) * 1e3)
            sizes = [r.size for r in reads]
            t0 = time.perf_counter()
            films = [decode_item(r.data, spec, raise_errors=False, name=p) for r, p in zip(reads, paths)]
            times["decode_ms"].append((time.perf_counter() - t0) / len(paths) * 1e3)
            t0 = time.perf_counter()
            for i in range(0, len(films), 64):
                predictor.assess_batch(paths[i:i + 64], films[i:i + 64])
            times["model_gate_ms"].append((time.perf_counter() - t0) / len(paths) * 1e3)
        out[name] = {k: _median(v) for k, v in times.items()}
        out[name].update(n=len(paths), mean_bytes=float(np.mean(sizes)))
    return out


def _driver_rate(n: int = 20_000) -> float:
    """Rows per second the driver's shard writer commits (pyarrow, zstd, fsync), from scorer-shaped tables."""
    import pyarrow as pa

    from pneumoscan.scale.shards import DriftSample, ShardWriter, shard_schema

    row = {"path": "/archive/2019/03/study-000000/IM-0001.dcm", "probability": 0.31, "score": 31.0,
           "decision": "NORMAL", "in_scope": True, "positive": False, "threshold": 0.44, "listing_index": 0,
           "sha256": "0" * 64, "size_bytes": 350_000, "mtime_ns": 0, "model_name": "efficientnet-lite0",
           "model_version": "0123456789ab", "_t_read": 0.0, "_t_decode": 0.0, "_t_model": 0.0, "_unchanged": False}
    tables = [pa.Table.from_pylist([{**row, "listing_index": i + j} for j in range(256)],
                                   schema=shard_schema(scorer=True)) for i in range(0, n, 256)]
    with tempfile.TemporaryDirectory() as tmp:
        writer = ShardWriter(tmp, first_seq=1, shard_rows=5000, sample=DriftSample(500))
        t0 = time.perf_counter()
        for t in tables:
            writer.add(t)
        writer.close()
        return writer.n_rows / (time.perf_counter() - t0)


def _dicom_copies(films: list[Path], folder: Path, n: int = 10) -> None:
    """16-bit uncompressed DICOM copies of the first ``n`` full-resolution films (MONOCHROME2, DX)."""
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(REPO / "tests"))
    from imagefactory import make_dicom

    for i, film in enumerate(films[:n]):
        gray = np.asarray(Image.open(film).convert("L"), dtype=np.uint16) * 16  # 12 bits stored, as DX films are
        make_dicom(folder / f"film{i:02d}.dcm", gray, bits_stored=12)


def estimate(stages: dict[str, Any], cores_here: int, rate_here: float, driver_rows_s: float) -> dict[str, Any]:
    """Hours for 10 million films on N nodes of 16 cores, per kind of film, from the measured per-core costs.

    Assumptions (stated in the output): each core runs one actor (one ONNX Runtime thread, decoding in its own
    thread) at the per-film cost measured here on one thread (read+hash CPU, decode, model and gate), divided by the
    efficiency the Ray engine reached on this machine on the small films (``rate_here`` films/s on ``cores_here``
    cores against the sum of their stage costs: scheduling, actor start-up and the shards included); storage
    delivers 1 GB/s in total to the cluster (a good NFS server or object store; local NVMe gives several times that)
    and every film is read once; the driver commits ``driver_rows_s`` rows per second (one process). Time is the
    slowest of the three."""
    films, node_cores, storage_bps = 10_000_000, 16, 1e9
    small = stages["small"]
    small_s = (small["read_hash_ms"] + small["decode_ms"] + small["model_gate_ms"]) / 1e3
    efficiency = min(1.0, rate_here * small_s / cores_here) if rate_here else 1.0
    out: dict[str, Any] = {"films": films, "cores_per_node": node_cores, "storage_bytes_per_s": storage_bps,
                           "driver_rows_per_s": driver_rows_s, "ray_efficiency_here": efficiency, "kinds": {}}
    for kind in ("fullres", "dicom"):
        s = stages[kind]
        stage_ms = s["read_hash_ms"] + s["decode_ms"] + s["model_gate_ms"]
        core_s = stage_ms / 1e3 / efficiency
        rows = {}
        for nodes in (1, 4, 16, 64):
            compute_h = films * core_s / (nodes * node_cores) / 3600
            storage_h = films * s["mean_bytes"] / storage_bps / 3600
            driver_h = films / driver_rows_s / 3600
            limit = max(("compute", compute_h), ("storage reads", storage_h), ("driver", driver_h),
                        key=lambda kv: kv[1])
            rows[str(nodes)] = {"hours": limit[1], "limited_by": limit[0], "compute_h": compute_h,
                                "storage_h": storage_h, "driver_h": driver_h}
        share = {k: s[k] / stage_ms for k in ("read_hash_ms", "decode_ms", "model_gate_ms")}
        out["kinds"][kind] = {"core_ms_per_film": core_s * 1e3, "mean_bytes": s["mean_bytes"],
                              "share_of_core_time": share, "nodes": rows}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small-n", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--fullres-copies", type=int, default=5,
                    help="copies of the 40 full-resolution films (so that actor start-up does not dominate)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "archive_scale.json")
    ap.add_argument("--estimate-only", action="store_true",
                    help="recompute the estimate from the measurements already in --out")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return {}
    if args.estimate_only:
        doc = json.loads(args.out.read_text())
        doc["estimate"] = estimate(doc["stages"], doc["machine"]["cpus"],
                                   doc["medians"]["small"]["ray_scoring_films_per_s"], doc["driver_rows_per_s"])
        args.out.write_text(json.dumps(doc, indent=2) + "\n")
        print(json.dumps(doc["estimate"], indent=2))
        return doc
    small_src = sorted((SHARED / "chest_xray_224" / "train").rglob("*.jpeg"))[: args.small_n]
    full_src = sorted(p for p in (SHARED / "fullres_samples").rglob("*") if p.is_file())
    if not small_src or not full_src:
        raise SystemExit(f"needs {SHARED}/chest_xray_224 and {SHARED}/fullres_samples")
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="archive-scale-") as tmp:
        folders = {}
        for name, src in (("small", small_src), ("fullres", full_src * args.fullres_copies)):
            folder = Path(tmp) / name
            folder.mkdir()
            for i, p in enumerate(src):  # unique names: the training set repeats some across its classes
                shutil.copyfile(p, folder / f"{i:05d}-{p.name}")
            folders[name] = str(folder)
        dicom_dir = Path(tmp) / "dicom"
        dicom_dir.mkdir()
        _dicom_copies(full_src, dicom_dir)
        stages = _stages(folders, str(dicom_dir), max(1, args.rounds))
        driver = _driver_rate()
        per = _rounds(args, folders, tmp)
    load_after = os.getloadavg()
    medians: dict[str, Any] = {}
    for name in SETS:
        d = _median([r[name]["wall_s"] for r in per["default"]])
        w = _median([r[name]["wall_s"] for r in per["ray"]])
        s = _median([r[name]["scoring_s"] for r in per["ray"]])
        n = per["ray"][0][name]["n"]
        medians[name] = {"n": n, "default_films_per_s": n / d, "ray_films_per_s": n / w,
                         "ray_scoring_films_per_s": n / s, "ray_over_default": d / w,
                         "ray_scoring_over_default": d / s,
                         "ray_resume_files_per_s": n / _median([r[name]["resume_s"] for r in per["ray"]]),
                         # the share of the actors' time in reading, decoding and the model (the rest: start-up,
                         # Ray's scheduling, building rows)
                         "ray_actor_utilisation": _median([sum(r[name]["stage_seconds"].values())
                                                           / (r[name]["actors"] * r[name]["scoring_s"])
                                                           for r in per["ray"]])}
    medians["ray_init_s"] = _median([r["ray_init_s"] for r in per["ray"]])
    cores = os.cpu_count() or 1
    doc = {"machine": {"cpus": cores, "platform": platform.platform(), "python": platform.python_version()},
           "load_before": load_before, "load_after": load_after, "rounds": per, "medians": medians,
           "stages": stages, "driver_rows_per_s": driver,
           "estimate": estimate(stages, cores, medians["small"]["ray_scoring_films_per_s"], driver)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({"medians": medians, "stages": stages, "driver_rows_per_s": driver,
                      "estimate": doc["estimate"]}, indent=2))
    return doc


if __name__ == "__main__":
    main()
