"""How much faster is one epoch from the decoded-image cache than one epoch decoded from the JPEGs?

(a) decode every image with ``read_image`` + ``resize_square`` (1 thread, then ``--workers`` threads);
(b) read every image from the memory-mapped cache in shuffled batches of ``--batch-size``, as
    ``torch.from_numpy(batch).float() / 255`` tensors with ``--threads`` torch threads (``cache``) and
    with one (``cache_torch_1_thread``), and as uint8 arrays only (``cache_uint8_only``).
Each is repeated ``--repeats`` times after the files are in the OS page cache; medians are reported.
The requirement is (a, 1 thread) / (b) >= 10. The comparison is conservative: (a) stops at uint8
arrays, while (b) also pays the uint8 -> float conversion that training needs either way.

    python benchmarks/cache_speed.py --data ../shared/data/chest_xray_224 --limit 1000
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from pneumoscan.data import build_cache, index_dataset
from pneumoscan.io import read_image
from pneumoscan.preprocessing import resize_square
from pneumoscan.utils import atomic_write_text

log = logging.getLogger("cache_speed")
REPO = Path(__file__).resolve().parents[1]


def _default_data() -> str:
    return os.environ.get("PNEUMOSCAN_DATA", "").strip() or str(REPO.parent / "shared/data/chest_xray_224")


def decode_epoch(paths: list[str], size: int, workers: int) -> float:
    """Seconds to decode and resize every path once."""
    def one(path: str) -> int:
        return int(resize_square(read_image(path), size)[0, 0])

    start = time.perf_counter()
    if workers <= 1:
        for p in paths:
            one(p)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(one, paths):
                pass
    return time.perf_counter() - start


def cache_epoch(images: np.ndarray, batch_size: int, seed: int, to_float: bool = True) -> float:
    """Seconds to read every cached image once in shuffled batches, as float tensors in [0, 1].

    With ``to_float=False`` only the uint8 gather is timed (to show where the time goes).
    """
    start = time.perf_counter()
    perm = np.random.default_rng(seed).permutation(len(images))
    for lo in range(0, len(perm), batch_size):
        batch = np.ascontiguousarray(images[perm[lo:lo + batch_size]])
        if to_float:
            # the same values as ``.float() / 255``; in place, so one float buffer per batch instead of two
            torch.from_numpy(batch).float().div_(255)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=_default_data(),
                        help="data folder or CSV manifest (default: $PNEUMOSCAN_DATA, else the shared data)")
    parser.add_argument("--split", default="train", help="sub-folder to read ('' for none; default: train)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--limit", type=int, default=0, help="use at most this many images (0: all)")
    parser.add_argument("--workers", type=int, default=2, help="threads for the threaded decode")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2, as in training here)")
    parser.add_argument("--cache-dir", default="", help="cache folder (default: a temporary folder, removed after)")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/cache_speed.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    load_before = os.getloadavg()
    index = index_dataset(args.data, split=args.split or None, check=False)
    records = index.records[: args.limit] if args.limit > 0 else index.records
    paths = [r.path for r in records]
    log.info("%d images from %s, size %d, %d repeats", len(paths), args.data, args.size, args.repeats)

    with tempfile.TemporaryDirectory(prefix="pneumoscan-bench-") as tmp:
        cache_dir = args.cache_dir or tmp
        start = time.perf_counter()
        cache = build_cache(records, args.size, cache_dir, num_workers=args.workers, progress=False)
        build_s = time.perf_counter() - start
        cache_epoch(cache.images, args.batch_size, seed=12345)  # warm-up: pages into memory
        decode_epoch(paths, args.size, 1)  # warm-up: files into the page cache
        times: dict[str, list[float]] = {"decode_1_thread": [], f"decode_{args.workers}_threads": [], "cache": [],
                                         "cache_torch_1_thread": [], "cache_uint8_only": []}
        for rep in range(args.repeats):
            times["decode_1_thread"].append(decode_epoch(paths, args.size, 1))
            times[f"decode_{args.workers}_threads"].append(decode_epoch(paths, args.size, args.workers))
            times["cache"].append(cache_epoch(cache.images, args.batch_size, seed=rep))
            torch.set_num_threads(1)  # the same with one torch thread: no cross-core hand-off per batch
            times["cache_torch_1_thread"].append(cache_epoch(cache.images, args.batch_size, seed=rep))
            torch.set_num_threads(args.threads)
            times["cache_uint8_only"].append(cache_epoch(cache.images, args.batch_size, seed=rep, to_float=False))
            log.info("repeat %d: %s", rep + 1, ", ".join(f"{k} {v[-1]:.3f}s" for k, v in times.items()))
        n_cached = len(cache)
        del cache

    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "n_images": len(paths),
        "n_cached": n_cached,
        "size": args.size,
        "repeats": args.repeats,
        "batch_size": args.batch_size,
        "torch_threads": torch.get_num_threads(),
        "build_cache_s": build_s,
        "median_s": med,
        "times_s": times,
        "ratio_decode_1_thread_over_cache": med["decode_1_thread"] / med["cache"],
        f"ratio_decode_{args.workers}_threads_over_cache": med[f"decode_{args.workers}_threads"] / med["cache"],
        "ratio_decode_1_thread_over_cache_torch_1_thread": med["decode_1_thread"] / med["cache_torch_1_thread"],
        "ratio_decode_1_thread_over_cache_uint8_only": med["decode_1_thread"] / med["cache_uint8_only"],
        "images_per_s": {k: len(paths) / v for k, v in med.items()},
        "requirement_10x_met": med["decode_1_thread"] / med["cache"] >= 10,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                    "platform": platform.platform(), "loadavg_1_5_15_before": load_before,
                    "loadavg_1_5_15_after": os.getloadavg()},
    }
    atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    log.info("median s: %s", ", ".join(f"{k} {v:.3f}" for k, v in med.items()))
    log.info("cache is %.1fx faster than decoding (1 thread), %.1fx with 1 torch thread, %.1fx as uint8; wrote %s",
             result["ratio_decode_1_thread_over_cache"], result["ratio_decode_1_thread_over_cache_torch_1_thread"],
             result["ratio_decode_1_thread_over_cache_uint8_only"], args.out)
    return result


if __name__ == "__main__":
    main()
