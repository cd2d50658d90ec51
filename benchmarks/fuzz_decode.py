"""Fuzz the image readers: thousands of seeded, damaged JPEG/PNG/TIFF/BMP/DICOM files, outcomes counted.

Each case takes one of the small valid seed files of ``tests/fuzzing.py`` (formats in turn, so each gets the
same share; a random seed file of that format), applies 1-3 mutations (generic byte damage or structure-aware:
DICOM VRs/lengths/UIDs, PNG chunks, JPEG markers, TIFF IFDs, BMP header fields) and calls
``read_image_info`` then ``read_image`` with ``max_pixels`` 4 million; every ``--path-every``-th case is read
from a file instead of bytes. The contract is that a bad file raises only ``pneumoscan.io.ImageError`` (or a
subclass) whose message names the file, and that a decoded image is a 2-D uint8 array. Anything else is a
failure: its bytes and a JSON description (seed, mutations, rng seed, traceback) go to ``--crashes``, and the
script exits with status 1.

    python benchmarks/fuzz_decode.py --cases 5000 --seed 0 --out benchmarks/results/fuzz_decode.json

Reproduce one case: ``fuzzing.make_case(seed_name, mutations, rng_seed)`` (with ``tests/`` on ``sys.path``)
rebuilds its bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import platform
import random
import resource
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the mutation code is shared with tests/test_fuzz.py

import fuzzing  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of a non-empty list."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@contextlib.contextmanager
def silence_native_stderr(enabled: bool) -> Iterator[None]:
    """Send file descriptor 2 to /dev/null (libtiff prints a line per damaged file from C)."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def save_reproducer(crashes: Path, index: int, case: dict[str, Any], data: bytes) -> Path:
    crashes.mkdir(parents=True, exist_ok=True)
    stem = f"case{index:06d}-{case['seed_name']}"
    (crashes / f"{stem}.bin").write_bytes(data)
    (crashes / f"{stem}.json").write_text(json.dumps(case, indent=2) + "\n")
    return crashes / f"{stem}.bin"


def run(cases: int, seed: int, crashes: Path, path_every: int) -> dict[str, Any]:
    rng = random.Random(seed)
    counts: dict[str, dict[str, Counter[str]]] = defaultdict(lambda: {"read_image": Counter(),
                                                                      "read_image_info": Counter()})
    times: dict[str, list[float]] = defaultdict(list)
    mutation_use: Counter[str] = Counter()
    seed_use: Counter[str] = Counter()
    failures: list[dict[str, Any]] = []
    by_format = {fmt: [n for n in fuzzing.SEED_NAMES if fuzzing.SEED_FORMATS[n] == fmt] for fmt in fuzzing.FORMATS}
    for name in fuzzing.SEED_NAMES:  # build the seeds before timing
        fuzzing.seed_bytes(name)
    with tempfile.TemporaryDirectory(prefix="fuzz_decode-") as tmp:
        for i in range(cases):
            fmt = fuzzing.FORMATS[i % len(fuzzing.FORMATS)]
            seed_name = rng.choice(by_format[fmt])
            names = fuzzing.choose_mutations(seed_name, rng)
            rng_seed = rng.getrandbits(32)
            mutation_use.update(names)
            seed_use[seed_name] += 1
            data = fuzzing.make_case(seed_name, names, rng_seed)
            via_path = path_every > 0 and i % path_every == path_every - 1
            if via_path:
                path = Path(tmp) / f"case-{i}.{fmt.lower()}"
                path.write_bytes(data)
                source, label, name = str(path), str(path), None
            else:
                label = f"fuzz-{i}-{seed_name}.bin"
                source, name = data, label
            start = time.perf_counter()
            try:
                info_outcome, image_outcome = fuzzing.check_case(source, label, name=name)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - recording escapes is the point
                case = {
                    "index": i, "format": fmt, "seed_name": seed_name, "mutations": names, "rng_seed": rng_seed,
                    "via_path": via_path, "exception": type(exc).__name__, "message": str(exc)[:2000],
                    "traceback": traceback.format_exc(),
                    "reproduce": f"fuzzing.make_case({seed_name!r}, {names!r}, {rng_seed})",
                }
                case["reproducer"] = str(save_reproducer(crashes, i, case, data))
                failures.append(case)
                counts[fmt]["read_image"]["FAILURE:" + type(exc).__name__] += 1
            else:
                counts[fmt]["read_image_info"][info_outcome] += 1
                counts[fmt]["read_image"][image_outcome] += 1
            finally:
                times[fmt].append(time.perf_counter() - start)
            if via_path:
                Path(source).unlink(missing_ok=True)
    all_times = [t for ts in times.values() for t in ts]
    return {
        "counts": {fmt: {call: dict(sorted(c.items())) for call, c in counts[fmt].items()}
                   for fmt in fuzzing.FORMATS if fmt in counts},
        "cases_per_format": {fmt: len(times[fmt]) for fmt in fuzzing.FORMATS if fmt in times},
        "time_per_case_ms": {
            "median": 1000 * statistics.median(all_times), "p95": 1000 * percentile(all_times, 95),
            "max": 1000 * max(all_times), "total_s": sum(all_times),
            "per_format": {fmt: {"median": 1000 * statistics.median(ts), "p95": 1000 * percentile(ts, 95)}
                           for fmt, ts in times.items()},
        },
        "mutation_use": dict(sorted(mutation_use.items())),
        "seed_use": dict(seed_use),
        "failures": failures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=5000, help="number of mutated files (default 5000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed for the whole run (default 0)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/fuzz_decode.json")
    parser.add_argument("--crashes", type=Path, default=Path(tempfile.gettempdir()) / "fuzz_decode_crashes",
                        help="folder for the bytes and description of each failing case")
    parser.add_argument("--path-every", type=int, default=10,
                        help="read every N-th case from a file path instead of bytes (0: never; default 10)")
    parser.add_argument("--show-native-stderr", action="store_true",
                        help="keep libtiff's messages on stderr (hidden by default)")
    args = parser.parse_args(argv)

    import numpy
    import PIL
    import pydicom

    warnings.simplefilter("ignore")  # damaged files make pydicom and Pillow warn on nearly every case
    logging.disable(logging.WARNING)
    load_start = os.getloadavg()
    wall = time.perf_counter()
    with silence_native_stderr(not args.show_native_stderr):
        result = run(args.cases, args.seed, args.crashes, args.path_every)
    wall = time.perf_counter() - wall
    summary = {
        "cases": args.cases,
        "seed": args.seed,
        "max_pixels": fuzzing.MAX_PIXELS,
        "seed_files": {name: {"format": fuzzing.SEED_FORMATS[name], "bytes": len(fuzzing.seed_bytes(name))}
                       for name in fuzzing.SEED_NAMES},
        "path_every": args.path_every,
        "failures_count": len(result["failures"]),
        "wall_s": wall,
        **result,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
        "loadavg_start": list(load_start),
        "loadavg_end": list(os.getloadavg()),
        "cpu_count": os.cpu_count(),
        "versions": {"python": platform.python_version(), "pillow": PIL.__version__,
                     "pydicom": pydicom.__version__, "numpy": numpy.__version__},
        "platform": platform.platform(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    t = summary["time_per_case_ms"]
    print(f"{args.cases} cases in {wall:.1f} s: median {t['median']:.2f} ms, p95 {t['p95']:.2f} ms per case; "
          f"peak RSS {summary['peak_rss_mib']:.0f} MiB; {len(result['failures'])} failures -> {args.out}")
    for fmt, calls in summary["counts"].items():
        print(f"  {fmt:5s} read_image: {dict(calls['read_image'])}")
    for f in result["failures"]:
        print(f"FAILURE {f['format']} {f['reproduce']}: {f['exception']}: {f['message'][:200]} "
              f"(saved {f['reproducer']})")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
