"""Full-resolution decoding (issue 27, item 3): which JPEG decoder, and decoding threads or processes.

Part 1, ``per_film`` (this process, one thread; every decoder on every film in turn, the order rotated film by
film): decode + resize to the model's square, median ms per film over ``--reps`` passes; and each decoder's squares
against today's (Pillow's draft, the product's path before the fast decoder): films whose square differs and the
largest pixel difference. On the full-resolution films, and the squares (not the timing) on ``--small-n`` training
films too.

* ``pillow-draft``: the product's path (``read_film``) with the fast decoder off: what shipped before;
* ``simplejpeg``: the product's path with the fast decoder (what ships now);
* ``pillow-full``: Pillow at full size, then the resize (no DCT-domain scaling; another square, for scale);
* ``*-raw``: the decoder alone at the scale the product uses, then the same resize, without the product's checks:
  ``pillow-draft-raw``, ``simplejpeg-raw``, ``opencv-raw`` (``IMREAD_REDUCED_GRAYSCALE_2/4/8``), ``turbojpeg-raw``
  (PyTurboJPEG, when it finds a libturbojpeg it accepts; else the reason is recorded).

Part 2, ``score_files`` (each configuration a fresh process per round, rounds interleaved): images per second of
``Predictor.score_files`` on the full-resolution folder (the shipped model, ONNX Runtime, batch 64, the default two
decoding workers; median of ``--passes`` passes), the CPU milliseconds it spent per film (every thread, and the
decoding processes where there are some: less sensitive to a busy machine than the wall clock), and the largest
difference of its probabilities from ``pillow``'s.

* ``pillow``: the fast decoder off; ``simplejpeg``: the default; ``opencv``: the product's rules with OpenCV
  decoding the files the fast path takes;
* ``simplejpeg-processes``: the decoding workers as processes (spawned) instead of threads;
* ``simplejpeg-blas1``: ``OPENBLAS_NUM_THREADS=1`` (the scope gate's nearest-neighbour product is a BLAS call per
  film; BLAS's own threads then fight the decoding and ONNX Runtime threads for the cores);
  ``simplejpeg-processes-blas1``: both. ``--configs`` picks some (``pillow`` is always run: the reference).

The JSON (``benchmarks/results/decoders.json``) keeps every round, medians, ratios to ``pillow``, and the load average
before and after each part. This machine is shared: compare ratios from one run.

    python benchmarks/decoders.py [--reps 5] [--rounds 3] [--passes 3] [--small-n 300] [--out FILE]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CONFIGS = ("pillow", "simplejpeg", "opencv", "simplejpeg-processes", "simplejpeg-blas1", "simplejpeg-processes-blas1")


def _files(root: Path, n: int | None = None) -> list[str]:
    files = sorted(str(p) for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    if n is not None and len(files) > n:
        step = len(files) / n
        files = [files[int(i * step)] for i in range(n)]
    return files


# ---------------------------------------------------------------- the decoders


def _opencv_luma(data: Any, frame: Any, scale: int) -> np.ndarray:
    """OpenCV's reduced grayscale decode, in :func:`pneumoscan.io.jpeg.fast_luma`'s place and shape."""
    import cv2

    flag = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
            8: cv2.IMREAD_REDUCED_GRAYSCALE_8}[scale]
    out = cv2.imdecode(np.frombuffer(bytes(data), np.uint8), flag | cv2.IMREAD_IGNORE_ORIENTATION)
    if out is None:
        raise ValueError("OpenCV could not decode it")
    return np.ascontiguousarray(out)


def _turbojpeg() -> tuple[Any, str]:
    """``(a TurboJPEG decoder, "")`` or ``(None, why not)``."""
    try:
        import turbojpeg

        return turbojpeg.TurboJPEG(), ""
    except Exception as exc:  # noqa: BLE001 - a missing or too old system library: recorded, not fatal
        return None, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}"


def _raw_decoders(side: int) -> tuple[dict[str, Callable[[bytes], np.ndarray]], dict[str, str]]:
    """Each decoder alone at the product's scale (``draft_scale`` for ``side``), luma ``(H, W) uint8``."""
    import simplejpeg
    from PIL import Image

    from pneumoscan.io.jpeg import draft_scale

    def pillow_draft(data: bytes) -> np.ndarray:
        im = Image.open(io.BytesIO(data))
        if draft_scale(im.size[0], im.size[1], side) > 1:
            im.draft("L", (side, side))
        im.load()
        return np.asarray(im if im.mode == "L" else im.convert("L"))

    def sj(data: bytes) -> np.ndarray:
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        s = draft_scale(w, h, side)
        return simplejpeg.decode_jpeg(data, colorspace="GRAY", min_height=-(-h // s) if s > 1 else 0,
                                      min_width=-(-w // s) if s > 1 else 0)[:, :, 0]

    def opencv(data: bytes) -> np.ndarray:
        h, w, _, _ = simplejpeg.decode_jpeg_header(data)
        return _opencv_luma(data, None, draft_scale(w, h, side))

    out: dict[str, Callable[[bytes], np.ndarray]] = {"pillow-draft-raw": pillow_draft, "simplejpeg-raw": sj,
                                                       "opencv-raw": opencv}
    missing: dict[str, str] = {}
    tj, why = _turbojpeg()
    if tj is None:
        missing["turbojpeg-raw"] = why
    else:
        import turbojpeg

        def turbo(data: bytes) -> np.ndarray:
            w, h, _, _ = tj.decode_header(data)
            s = draft_scale(w, h, side)
            return tj.decode(data, pixel_format=turbojpeg.TJPF_GRAY, scaling_factor=(1, s))[:, :, 0]

        out["turbojpeg-raw"] = turbo
    return out, missing


def _per_film(films: list[str], small: list[str], reps: int) -> dict[str, Any]:
    """Part 1: decode + resize ms per film, and each decoder's squares against Pillow's draft."""
    from PIL import Image

    import pneumoscan.io.images as images
    from pneumoscan.preprocessing import Preprocessing, decode_side, read_film, resize_for_model

    spec = Preprocessing()
    side = decode_side(spec)
    raw, missing = _raw_decoders(side)

    def product(fast: bool) -> Callable[[bytes], np.ndarray]:
        def run(data: bytes) -> np.ndarray:
            keep = images.fast_available
            if not fast:
                images.fast_available = lambda: False  # type: ignore[assignment]
            try:
                return read_film(data, spec).square
            finally:
                images.fast_available = keep
        return run

    def pillow_full(data: bytes) -> np.ndarray:
        im = Image.open(io.BytesIO(data))
        im.load()
        return resize_for_model(np.asarray(im.convert("L")), spec)

    def squared(fn: Callable[[bytes], np.ndarray]) -> Callable[[bytes], np.ndarray]:
        return lambda data: resize_for_model(np.ascontiguousarray(fn(data)), spec)

    decoders = {"pillow-draft": product(False), "simplejpeg": product(True), "pillow-full": pillow_full,
                **{name: squared(fn) for name, fn in raw.items()}}
    datas = [Path(f).read_bytes() for f in films]
    times: dict[str, list[float]] = {name: [] for name in decoders}
    names = list(decoders)
    for _ in range(reps):
        for i, data in enumerate(datas):
            for name in names[i % len(names):] + names[:i % len(names)]:
                t0 = time.perf_counter()
                decoders[name](data)
                times[name].append(1e3 * (time.perf_counter() - t0))
    out: dict[str, Any] = {"ms_per_film_median": {k: round(statistics.median(v), 3) for k, v in times.items()},
                           "ms_per_film_mean": {k: round(statistics.fmean(v), 3) for k, v in times.items()},
                           "unavailable": missing}
    base = out["ms_per_film_median"]["pillow-draft"]
    out["speedup_over_pillow_draft"] = {k: round(base / v, 3) for k, v in out["ms_per_film_median"].items()}
    for label, files in (("fullres", datas), ("small", [Path(f).read_bytes() for f in small])):
        ref = [decoders["pillow-draft"](d) for d in files]
        same: dict[str, Any] = {}
        for name, fn in decoders.items():
            if label == "small" and name.endswith("-raw") and name != "simplejpeg-raw":
                continue  # colour training films: only the product's paths and simplejpeg's luma are of interest
            diffs = [int(np.abs(fn(d).astype(np.int16) - r.astype(np.int16)).max()) for d, r in zip(files, ref)]
            same[name] = {"films_differing": sum(x > 0 for x in diffs), "max_pixel_difference": max(diffs)}
        out[f"squares_vs_pillow_draft_{label}"] = {"films": len(files), **same}
    return out


# ---------------------------------------------------------------- score_files, one configuration per process


def _workers_cpu_s(pool: Any) -> float:
    """CPU seconds (user + system) the live worker processes of a process pool have used so far (Linux /proc)."""
    total = 0
    for pid in list(getattr(pool, "_processes", None) or {}):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


def _child(config: str, films: list[str], passes: int) -> dict[str, Any]:
    import pneumoscan.io.images as images
    from pneumoscan.inference.predictor import PACKAGED_MODEL, Predictor

    if config == "pillow":
        images.fast_available = lambda: False  # type: ignore[assignment]
    elif config == "opencv":
        images.fast_luma = _opencv_luma  # type: ignore[assignment]
    p = Predictor.from_checkpoint(PACKAGED_MODEL)
    if "processes" in config:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        p._pool = ProcessPoolExecutor(max_workers=p.options.decode_workers,  # type: ignore[assignment]
                                      mp_context=multiprocessing.get_context("spawn"))
    results = p.score_files(films, batch_size=64)  # warm-up: session, pool, first allocations
    rates, cpu = [], []
    for _ in range(passes):
        c0, w0 = time.process_time(), _workers_cpu_s(p._pool)
        t0 = time.perf_counter()
        p.score_files(films, batch_size=64)
        rates.append(len(films) / (time.perf_counter() - t0))
        cpu.append(1e3 * (time.process_time() - c0 + _workers_cpu_s(p._pool) - w0) / len(films))
    p.close()
    return {"images_per_s": statistics.median(rates), "passes": rates, "cpu_ms_per_film": statistics.median(cpu),
            "decode_workers": p.options.decode_workers, "probabilities": [r.probability for r in results]}


def _score_files(films: list[str], rounds: int, passes: int, configs: list[str]) -> dict[str, Any]:
    per: dict[str, list[dict[str, Any]]] = {c: [] for c in configs}
    loads = []
    for r in range(rounds):
        loads.append(os.getloadavg())
        for config in configs:
            env = dict(os.environ)
            if "blas1" in config:
                env["OPENBLAS_NUM_THREADS"] = "1"
            job = json.dumps({"config": config, "films": films, "passes": passes})
            proc = subprocess.run([sys.executable, __file__, "--child", job], capture_output=True, text=True,
                                  cwd=REPO, env=env, check=True)
            per[config].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"round {r + 1}/{rounds} {config}: {per[config][-1]['images_per_s']:.1f} img/s, "
                  f"{per[config][-1]['cpu_ms_per_film']:.2f} CPU ms/film", flush=True)
    ref = np.array(per["pillow"][0]["probabilities"], dtype=np.float64)
    med = {c: round(statistics.median(x["images_per_s"] for x in runs), 1) for c, runs in per.items()}
    return {
        "images_per_s": med,
        "rounds_images_per_s": {c: [round(x["images_per_s"], 1) for x in runs] for c, runs in per.items()},
        "over_pillow": {c: round(v / med["pillow"], 3) for c, v in med.items()},
        "cpu_ms_per_film": {c: round(statistics.median(x["cpu_ms_per_film"] for x in runs), 2)
                            for c, runs in per.items()},
        "rounds_cpu_ms_per_film": {c: [round(x["cpu_ms_per_film"], 2) for x in runs] for c, runs in per.items()},
        "over_pillow_per_round": {c: [round(x["images_per_s"] / y["images_per_s"], 3)
                                      for x, y in zip(runs, per["pillow"])] for c, runs in per.items()},
        "max_abs_delta_probability_vs_pillow": {
            c: float(max(np.max(np.abs(np.array(x["probabilities"], dtype=np.float64) - ref)) for x in runs))
            for c, runs in per.items()},
        "decode_workers": per["simplejpeg"][0]["decode_workers"],
        "loadavg_1_5_15_per_round": loads,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fullres", type=Path, default=Path(os.environ.get("PNEUMOSCAN_SAMPLES", "")
                                                             or SHARED / "fullres_samples"))
    parser.add_argument("--small", type=Path, default=SHARED / "chest_xray_224")
    parser.add_argument("--small-n", type=int, default=300, help="training films whose squares are compared")
    parser.add_argument("--reps", type=int, default=5, help="passes over the films in part 1")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every configuration in part 2")
    parser.add_argument("--passes", type=int, default=3, help="score_files passes per configuration and round")
    parser.add_argument("--skip-score-files", action="store_true", help="part 1 only")
    parser.add_argument("--skip-per-film", action="store_true", help="part 2 only")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="part 2's configurations, comma-separated")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "decoders.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        job = json.loads(args.child)
        print(json.dumps(_child(job["config"], job["films"], job["passes"])))
        return {}
    for folder in (args.fullres, args.small):
        if not folder.is_dir():
            parser.error(f"{folder} not found (see ../shared/data/README.md)")
    import cv2
    import simplejpeg
    from PIL import Image

    from pneumoscan import __version__
    from pneumoscan.utils import atomic_write_text

    films, small = _files(args.fullres), _files(args.small, args.small_n)
    doc: dict[str, Any] = {"benchmark": "decoders", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    configs = ["pillow", *[c for c in args.configs.split(",") if c and c != "pillow"]]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configuration(s) {', '.join(sorted(unknown))}; known: {', '.join(CONFIGS)}")
    if not args.skip_per_film:
        load0 = os.getloadavg()
        doc["per_film"] = _per_film(films, small, args.reps)
        doc["per_film"]["loadavg_1_5_15_before_after"] = [load0, os.getloadavg()]
        print(json.dumps(doc["per_film"]["ms_per_film_median"]), flush=True)
    if not args.skip_score_files:
        load1 = os.getloadavg()
        doc["score_files"] = _score_files(films, args.rounds, args.passes, configs)
        doc["score_files"]["loadavg_1_5_15_before_after"] = [load1, os.getloadavg()]
    doc["machine"] = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                      "pillow": Image.__version__, "simplejpeg": simplejpeg.__version__, "opencv": cv2.__version__,
                      "pneumoscan": __version__}
    doc["settings"] = {"fullres": f"{len(films)} films from {args.fullres}", "small": f"{len(small)} films from "
                       f"{args.small}", "reps": args.reps, "rounds": args.rounds, "passes": args.passes,
                       "configs": configs}
    doc["note"] = ("part 1: one thread, decoders interleaved film by film, medians; part 2: a fresh process per "
                   "configuration and round, rounds interleaved, medians. Quote ratios from one run: the machine is "
                   "shared (see the load averages).")
    atomic_write_text(args.out, json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: doc[k] for k in ("per_film", "score_files") if k in doc}, indent=1))
    print(f"wrote {args.out}")
    return doc


if __name__ == "__main__":
    main()
    sys.exit(0)
