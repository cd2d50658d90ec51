"""pneumoscan against a peer, end to end, as ratios measured in one run: DenseNet-121 from MONAI (the CheXNet /
torchxrayvision architecture; random weights, 1 input channel, 1 output, 224 px) fed exactly as pneumoscan feeds
its own model (pneumoscan.io.read_image, the one resize, the one normalisation, the same decode threads), against
pneumoscan's public Predictor API on its packaged model, with each backend the Predictor offers (the default,
ONNX Runtime where it is, and torch).

Three measurements, each interleaved (every repeat runs every contender, in an order that rotates), medians:

- batch over the full-resolution films (``../shared/data/fullres_samples``, 40 films, 440 to 2400 px);
- batch over N small images (the 224-px training images);
- single-image latency: one image per call, the contenders taking turns image by image (p50 and p90).

Ratios are DenseNet's time over pneumoscan's (how many times faster pneumoscan is), computed per repeat and then
the median. The load average is recorded at the start and the end: the machine is shared, so quote ratios.

    python benchmarks/peer_densenet.py --out benchmarks/results/peer_densenet.json
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SUFFIXES = {".jpeg", ".jpg", ".png", ".dcm"}
PEER_SIZE = 224

Contender = Callable[[Sequence[str]], np.ndarray]


def _images(folder: Path, limit: int) -> list[str]:
    """Up to ``limit`` image paths under ``folder`` (both classes, interleaved, sorted within each)."""
    by_class = [sorted(str(p) for p in sub.rglob("*") if p.suffix.lower() in SUFFIXES)
                for sub in sorted(folder.iterdir()) if sub.is_dir()] if folder.is_dir() else []
    mixed = [p for group in zip(*by_class) for p in group] if by_class else []
    return mixed[:limit] if limit else mixed


def densenet_pipeline(threads: int, decode_workers: int, batch_size: int, spec: Any) -> Contender:
    """DenseNet-121 (MONAI, random weights) fed like pneumoscan: same decoder (a large JPEG at reduced scale, at
    least twice the 224-px input), resize and normalisation (``spec``,
    the packaged model's, at 224 px), the same number of decode threads, channels-last, inference mode, sigmoid of
    one logit."""
    import torch
    from monai.networks.nets import DenseNet121

    from pneumoscan.io import read_image
    from pneumoscan.preprocessing import decode_side, to_model_input

    torch.manual_seed(0)
    model = DenseNet121(spatial_dims=2, in_channels=1, out_channels=1).eval()
    model = model.to(memory_format=torch.channels_last)
    spec = dataclasses.replace(spec, image_size=PEER_SIZE)
    pool = ThreadPoolExecutor(max_workers=max(1, decode_workers))
    side = decode_side(spec)  # a large JPEG decoded at reduced scale, as pneumoscan decodes for its own square

    def decode(path: str) -> np.ndarray:
        return read_image(path, reduce_to=side)

    def run(paths: Sequence[str]) -> np.ndarray:
        torch.set_num_threads(threads)  # the Predictor sets it too: each contender runs with the same count
        out = []
        for lo in range(0, len(paths), batch_size):
            grays = list(pool.map(decode, paths[lo:lo + batch_size]))
            x = to_model_input(grays, spec).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                out.append(torch.sigmoid(model(x).float().reshape(-1)).numpy())
        return np.concatenate(out)

    return run


def pneumoscan_pipelines(threads: int, decode_workers: int, batch_size: int) -> tuple[dict[str, Contender], Any]:
    """``{"pneumoscan-<backend>": predict_proba}`` for the default backend and torch, through the public API;
    and the packaged model's preprocessing (its mean and std feed the peer)."""
    from pneumoscan.inference.predictor import Predictor, default_model_path

    try:
        from pneumoscan.inference.scoring import RuntimeOptions
    except ImportError:  # older layouts
        from pneumoscan.inference.predictor import RuntimeOptions  # type: ignore[no-redef]

    fields = inspect.signature(RuntimeOptions).parameters
    opts = {k: v for k, v in {"threads": threads, "decode_workers": decode_workers, "batch_size": batch_size}.items()
            if k in fields}
    path = default_model_path()
    has_backend = "backend" in inspect.signature(Predictor.from_checkpoint).parameters
    wanted = [None, "torch"] if has_backend else [None]
    out: dict[str, Contender] = {}
    spec = None
    for backend in wanted:
        kwargs = {"backend": backend} if backend else {}
        predictor = Predictor.from_checkpoint(path, options=RuntimeOptions(**opts), **kwargs)
        name = f"pneumoscan-{'default-' if backend is None else ''}{predictor.backend}"
        if backend is not None and any(n.endswith(predictor.backend) for n in out):
            continue  # the default already is this backend
        out[name] = predictor.predict_proba
        spec = predictor.preprocessing
    return out, spec


def _time(fn: Contender, paths: Sequence[str]) -> float:
    t0 = time.perf_counter()
    fn(paths)
    return time.perf_counter() - t0


def batch_rounds(contenders: dict[str, Contender], paths: list[str], repeats: int) -> dict[str, Any]:
    """Each repeat runs every contender over all ``paths`` (order rotating); seconds, images/s and ratios."""
    names = list(contenders)
    for name in names:  # warm-up: decode pools, thread pools, first-call allocations
        contenders[name](paths[: min(4, len(paths))])
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        order = names[r % len(names):] + names[: r % len(names)]
        for name in order:
            times[name].append(_time(contenders[name], paths))
    return _summarise(times, len(paths), "s")


def single_rounds(contenders: dict[str, Contender], paths: list[str], repeats: int) -> dict[str, Any]:
    """One image per call, the contenders taking turns image by image; latencies in ms."""
    names = list(contenders)
    lat: dict[str, list[float]] = {n: [] for n in names}
    for name in names:
        contenders[name](paths[:1])
    for r in range(repeats):
        for i, path in enumerate(paths):
            k = (i + r) % len(names)
            for name in names[k:] + names[:k]:
                lat[name].append(1000 * _time(contenders[name], [path]))
    return _summarise(lat, 1, "ms")


def _summarise(times: dict[str, list[float]], n_images: int, unit: str) -> dict[str, Any]:
    """Medians per contender and, per repeat (or call), DenseNet's time over each pneumoscan contender's."""
    out: dict[str, Any] = {"n_images": n_images, "unit": unit, "contenders": {}}
    for name, values in times.items():
        med = statistics.median(values)
        entry: dict[str, Any] = {f"median_{unit}": med, f"all_{unit}": values}
        if unit == "s":
            entry["images_per_s_median"] = n_images / med
        else:
            entry["p90_ms"] = float(np.percentile(values, 90))
        out["contenders"][name] = entry
    peer = times.get("densenet121-monai")
    if peer:
        out["times_faster_than_densenet121_median"] = {
            name: statistics.median(p / v for p, v in zip(peer, values))
            for name, values in times.items() if name != "densenet121-monai"}
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fullres", type=Path, default=Path(os.environ.get("PNEUMOSCAN_SAMPLES") or
                                                         SHARED / "fullres_samples"))
    p.add_argument("--small", type=Path, default=Path(os.environ.get("PNEUMOSCAN_DATA") or
                                                       SHARED / "chest_xray_224"))
    p.add_argument("--fullres-limit", type=int, default=0, help="at most this many full-resolution films (0: all)")
    p.add_argument("--n-small", type=int, default=200, help="small images in the second batch measurement")
    p.add_argument("--n-single", type=int, default=20, help="images in the single-image latency measurement")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads of every contender")
    p.add_argument("--decode-workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--conditions", default="", help="free text saved with the results")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "peer_densenet.json")
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    load_start = list(os.getloadavg())
    fullres = _images(args.fullres, args.fullres_limit)
    small = _images(args.small / "train" if (args.small / "train").is_dir() else args.small, args.n_small)
    if not fullres or not small:
        raise SystemExit(f"no images found in {args.fullres} or {args.small} (see ../shared/data/README.md)")
    contenders, spec = pneumoscan_pipelines(args.threads, args.decode_workers, args.batch_size)
    contenders["densenet121-monai"] = densenet_pipeline(args.threads, args.decode_workers, args.batch_size, spec)
    import torch

    from pneumoscan.utils import atomic_write_text

    doc: dict[str, Any] = {
        "benchmark": "peer_densenet", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__},
        "threads": args.threads, "decode_workers": args.decode_workers, "batch_size": args.batch_size,
        "repeats": args.repeats, "pneumoscan_image_size": spec.image_size, "peer_image_size": PEER_SIZE,
        "contenders": list(contenders), "conditions": args.conditions, "load_average_start": load_start,
        "batch_fullres": batch_rounds(contenders, fullres, args.repeats),
        "batch_small": batch_rounds(contenders, small, args.repeats),
        "single_image": single_rounds(contenders, small[: args.n_single], max(1, args.repeats // 2)),
        "note": "end to end from the file (decode, resize, normalise, model, sigmoid); DenseNet-121 has random "
                "weights (speed only); ratios = DenseNet's time / pneumoscan's, per repeat, then the median",
    }
    doc["load_average_end"] = list(os.getloadavg())
    atomic_write_text(args.out, json.dumps(doc, indent=2) + "\n")
    for key in ("batch_fullres", "batch_small", "single_image"):
        print(key, json.dumps(doc[key].get("times_faster_than_densenet121_median")), flush=True)
    print(f"wrote {args.out}")
    return doc


if __name__ == "__main__":
    main()
